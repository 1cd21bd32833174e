package image

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

// onlineImage opens an image with chain [base, parent, child, top] (real
// files) and returns it with the expected content of its first 64 clusters.
func onlineImage(t *testing.T) (img *Image, want []byte) {
	t.Helper()
	const cs = 64 << 10
	dir := t.TempDir()
	if err := Create(dir, 4<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, 0, pattern(1, 40*cs))
	snapshotDir(t, dir)
	writeDir(t, dir, 8*cs, pattern(2, 20*cs))
	snapshotDir(t, dir)
	writeDir(t, dir, 4*cs+4096, pattern(3, 10*cs))
	snapshotDir(t, dir)
	writeDir(t, dir, 30*cs, pattern(4, cs))
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img, mustRead(t, img.Chain(), 0, 64*cs)
}

// writer writes and reads back random clusters until stop is closed,
// flushing now and then; it keeps want up to date.
func writer(t *testing.T, c *Chain, want []byte, stop chan struct{}, wg *sync.WaitGroup, errs chan<- error) {
	const cs = 64 << 10
	defer wg.Done()
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		off := int64(r.IntN(64))*cs + int64(r.IntN(16))*4096
		p := pattern(byte(i), 4096*(1+r.IntN(4)))
		if off+int64(len(p)) > int64(len(want)) {
			continue
		}
		if _, err := c.WriteAt(p, off); err != nil {
			errs <- err
			return
		}
		copy(want[off:], p)
		got := make([]byte, len(p))
		if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, p) {
			errs <- errors.New("read back differs during the merge")
			return
		}
		if i%8 == 0 {
			if err := c.Flush(); err != nil {
				errs <- err
				return
			}
		}
	}
}

func TestChainMergeOnline(t *testing.T) {
	cases := []struct {
		name      string
		pair      int // index of the parent in the chain
		direction MergeDirection
	}{
		{"frozen down", 1, MergeDown},
		{"frozen up", 1, MergeUp},
		{"bottom pair auto", 0, MergeAuto},
		{"top up", 2, MergeUp},
		{"top auto", 2, MergeAuto},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img, want := onlineImage(t)
			c := img.Chain()
			files := c.Deltas()
			stop, errs := make(chan struct{}), make(chan error, 1)
			var wg sync.WaitGroup
			wg.Add(1)
			go writer(t, c, want, stop, &wg, errs)
			st, err := img.Merge(context.Background(), files[tc.pair], files[tc.pair+1], PairMergeOptions{Direction: tc.direction})
			close(stop)
			wg.Wait()
			if err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			t.Logf("%+v", st)
			if tc.direction != MergeAuto && st.Direction != tc.direction || tc.pair == 2 && st.Direction != MergeUp {
				t.Fatalf("direction %s", st.Direction)
			}
			if got := mustRead(t, c, 0, len(want)); !bytes.Equal(got, want) {
				t.Fatal("content differs after the merge")
			}
			if c.Depth() != 3 {
				t.Fatalf("depth %d", c.Depth())
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if r, err := Check(img.Dir, false); err != nil || !r.Clean() {
				t.Fatalf("check: %v %+v", err, r)
			}
			if got := readDir(t, img.Dir, len(want)); !bytes.Equal(got, want) {
				t.Fatal("reopened image differs")
			}
			if f := mustFiles(t, img.Dir); len(f) != 3 || f[tc.pair] != st.Kept {
				t.Fatalf("descriptor chain %v, kept %s", f, st.Kept)
			}
		})
	}
}

func TestChainMergeRefusesAndUndoes(t *testing.T) {
	img, want := onlineImage(t)
	c := img.Chain()
	files := c.Deltas()
	ctx := context.Background()
	if _, err := c.Merge(ctx, files[2], files[3], PairMergeOptions{Direction: MergeDown}, nil); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("down into the top: %v", err)
	}
	if _, err := c.Merge(ctx, files[0], files[2], PairMergeOptions{}, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not adjacent: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Merge(cancelled, files[1], files[2], PairMergeOptions{}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if _, err := c.Merge(cancelled, files[2], files[3], PairMergeOptions{}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled (top): %v", err)
	}
	boom := errors.New("descriptor write failed")
	for _, dir := range []MergeDirection{MergeDown, MergeUp} {
		if _, err := c.Merge(ctx, files[1], files[2], PairMergeOptions{Direction: dir},
			func([]string) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("record failure: %v", err)
		}
	}
	if _, err := c.Merge(ctx, files[2], files[3], PairMergeOptions{}, func([]string) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("record failure (top): %v", err)
	}
	if c.Depth() != 4 {
		t.Fatalf("depth %d after failed merges", c.Depth())
	}
	if got := mustRead(t, c, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatal("failed merges changed the content")
	}
	mustWrite(t, c, 0, pattern(9, 4096))
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	// A retry after all that goes through.
	if _, err := img.Merge(ctx, files[1], files[2], PairMergeOptions{}); err != nil {
		t.Fatal(err)
	}
}
