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

// writer writes (and discards) and reads back random clusters until stop
// is closed, flushing now and then; it keeps want up to date.
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
		if i%7 == 3 { // a discard: a punch in the top, or a zero cluster hiding the lower ones
			if r.IntN(2) == 0 {
				off, p = off/cs*cs, make([]byte, cs)
			} else {
				p = make([]byte, len(p))
			}
			if err := c.Discard(off, int64(len(p))); err != nil {
				errs <- err
				return
			}
		} else if _, err := c.WriteAt(p, off); err != nil {
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
		{"top down", 2, MergeDown},
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
			var last [2]int64
			progress := func(done, total int64) { last = [2]int64{done, total} }
			st, err := img.Merge(context.Background(), files[tc.pair], files[tc.pair+1], PairMergeOptions{Direction: tc.direction, Progress: progress})
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
			if last[0] != last[1] || last[1] == 0 {
				t.Fatalf("last progress %d of %d", last[0], last[1])
			}
			if tc.direction != MergeAuto && st.Direction != tc.direction {
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
	if _, err := c.Merge(ctx, files[0], files[2], PairMergeOptions{}, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not adjacent: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, pair := range [][2]string{{files[1], files[2]}, {files[2], files[3]}} {
		for _, dir := range []MergeDirection{MergeDown, MergeUp} {
			if _, err := c.Merge(cancelled, pair[0], pair[1], PairMergeOptions{Direction: dir}, nil); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled %s: %v", dir, err)
			}
		}
	}
	boom := errors.New("descriptor write failed")
	for _, dir := range []MergeDirection{MergeDown, MergeUp} {
		if _, err := c.Merge(ctx, files[1], files[2], PairMergeOptions{Direction: dir},
			func([]string) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("record failure: %v", err)
		}
	}
	for _, dir := range []MergeDirection{MergeDown, MergeUp} {
		if _, err := c.Merge(ctx, files[2], files[3], PairMergeOptions{Direction: dir}, func([]string) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("record failure (top %s): %v", dir, err)
		}
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

// TestChainMergeDownIntoSmallerParent: a parent frozen before the volume
// grew cannot grow while served: down is refused, Auto merges up.
func TestChainMergeDownIntoSmallerParent(t *testing.T) {
	const cs = 64 << 10
	dir := t.TempDir()
	if err := Create(dir, 1<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, 0, pattern(1, 4*cs))
	snapshotDir(t, dir)
	if err := GrowDir(dir, 8<<20); err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, 2*cs, pattern(2, 4*cs))
	want := readDir(t, dir, 8<<20)
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	files := img.Chain().Deltas()
	ctx := context.Background()
	if _, err := img.Merge(ctx, files[0], files[1], PairMergeOptions{Direction: MergeDown}); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("down into a smaller parent: %v", err)
	}
	st, err := img.Merge(ctx, files[0], files[1], PairMergeOptions{})
	if err != nil || st.Direction != MergeUp {
		t.Fatalf("auto: %+v %v", st, err)
	}
	if got := mustRead(t, img.Chain(), 0, len(want)); !bytes.Equal(got, want) {
		t.Fatal("content changed")
	}
}

// writeHookFS calls hook before each write into a file opened through it.
type writeHookFS struct {
	FS
	hook func(path string)
}

type writeHookFile struct {
	File
	path string
	fs   *writeHookFS
}

func (h *writeHookFS) Open(path string, writable bool) (File, error) {
	f, err := h.FS.Open(path, writable)
	if err != nil {
		return nil, err
	}
	return &writeHookFile{File: f, path: path, fs: h}, nil
}

func (f *writeHookFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.hook(f.path)
	return f.File.WriteAt(p, off)
}

// TestChainMergeTopDownRecopiesDirtyClusters: writes that land in the top
// while it is being copied down (into a cluster already copied, into the
// cluster being copied, into a new one) reach the parent before the
// switch: the dirty clusters are copied again.
func TestChainMergeTopDownRecopiesDirtyClusters(t *testing.T) {
	const cs = 64 << 10
	fsys := &writeHookFS{FS: NewOSFS(false)}
	fsys.hook = func(string) {}
	dir := t.TempDir()
	if err := Create(dir, 4<<20, CreateOptions{ClusterSize: cs, FS: fsys}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	c := img.Chain()
	mustWrite(t, c, 0, pattern(1, 8*cs))
	if _, err := img.Snapshot(SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, 2*cs, pattern(2, 3*cs))
	files := c.Deltas()
	writes := []struct {
		off int64
		p   []byte
	}{
		{2*cs + 4096, pattern(3, 4096)}, // the first cluster copied, being copied
		{3 * cs, pattern(4, cs)},        // one not copied yet
		{2*cs + 8192, pattern(5, 4096)}, // copied already
		{6*cs + 100, pattern(6, 300)},   // a new top cluster (copy-up from the parent)
	}
	n := 0
	// The merge writes into the parent through its own handle: each such
	// write (the copy of one cluster) lets the next guest write in.
	fsys.hook = func(path string) {
		if path != files[0] || n >= len(writes) {
			return
		}
		w := writes[n]
		n++
		if _, err := c.WriteAt(w.p, w.off); err != nil {
			t.Error(err)
		}
	}
	want := mustRead(t, c, 0, 8*cs)
	for _, w := range writes {
		copy(want[w.off:], w.p)
	}
	st, err := img.Merge(context.Background(), files[0], files[1], PairMergeOptions{Direction: MergeDown})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(writes) {
		t.Fatalf("%d of the writes during the copy happened", n)
	}
	if got := mustRead(t, c, 0, 8*cs); !bytes.Equal(got, want) {
		t.Fatal("content differs after the merge")
	}
	if c.Depth() != 1 || st.Kept != files[0] {
		t.Fatalf("depth %d, kept %s", c.Depth(), st.Kept)
	}
	// The new top is the parent, writable, and survives a reopen.
	mustWrite(t, c, 7*cs, pattern(7, 4096))
	copy(want[7*cs:], pattern(7, 4096))
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readDir(t, dir, 8*cs); !bytes.Equal(got, want) {
		t.Fatal("reopened image differs")
	}
	if r, err := Check(dir, false); err != nil || !r.Clean() {
		t.Fatalf("check: %v %+v", err, r)
	}
}

// TestChainMergeStopsAtStickySyncError: a failed sync of the top while an
// online merge copies into it (up) or switches away from it (down) fails
// the merge and the chain (Err), leaves the descriptor as it was, and a
// failed chain takes no merge. Reads go on.
func TestChainMergeStopsAtStickySyncError(t *testing.T) {
	const cs = 64 << 10
	for _, dir := range []MergeDirection{MergeUp, MergeDown} {
		t.Run(string(dir), func(t *testing.T) {
			mem, d := newMemFS(), t.TempDir()
			fsys := &faultFS{FS: mem, metaEnd: cs}
			if err := Create(d, 8<<20, CreateOptions{ClusterSize: cs, FS: fsys}); err != nil {
				t.Fatal(err)
			}
			img, err := OpenDir(d, OpenOptions{FS: fsys})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			c := img.Chain()
			mustWrite(t, c, 0, pattern(1, 4*cs))
			if _, err := img.Snapshot(SnapshotOptions{}); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, c, cs, pattern(2, cs))
			want := mustRead(t, c, 0, 4*cs)
			files := c.Deltas()
			fsys.only = files[1] // the top
			fsys.arm(true, false)
			_, err = img.Merge(context.Background(), files[0], files[1], PairMergeOptions{Direction: dir})
			if !errors.Is(err, ErrSyncFailed) || c.Err() == nil {
				t.Fatalf("merge: %v, chain error %v; want the sync failure", err, c.Err())
			}
			if desc, err := readDescriptor(mem, d); err != nil || len(desc.Storage[0].Images) != 2 {
				t.Fatalf("descriptor after the failed merge: %v", err)
			}
			if got := mustRead(t, c, 0, 4*cs); !bytes.Equal(got, want) {
				t.Fatal("reads changed")
			}
			if _, err := img.Merge(context.Background(), files[0], files[1], PairMergeOptions{Direction: dir}); !errors.Is(err, ErrSyncFailed) {
				t.Fatalf("merge on a failed chain: %v", err)
			}
		})
	}
}

func TestDirtySetUnits(t *testing.T) {
	const cs = 1 << 20 // 64 units of 16 KiB
	d := newDirtySet(4096, cs)
	if d.unit != 16<<10 {
		t.Fatalf("unit %d", d.unit)
	}
	d.mark(3, 0, 1)
	d.mark(3, 20<<10, 40<<10) // units 1 and 2
	d.mark(3, cs-1, cs)       // unit 63
	d.mark(4095, 0, cs)       // all
	d.mark(9999, 0, 1)        // past the end: ignored
	got := d.drain()
	want := []dirtyCluster{{3, 1 | 2 | 4 | 1<<63}, {4095, ^uint64(0)}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("drain %x, want %x", got, want)
	}
	if d.drain() != nil || d.take(3) != 0 {
		t.Fatal("drain did not clear")
	}
	small := newDirtySet(16, 64<<10) // 16 units of 4 KiB
	small.mark(0, 4095, 4097)
	if m := small.take(0); m != 3 {
		t.Fatalf("mask %b", m)
	}
}

// TestChainMergeTopFailsOnSnapshot: a snapshot taken while the top is
// being merged makes the child frozen, the tip of a snapshot: copying the
// parent into the new top and dropping the parent would change what that
// snapshot reads. The merge must fail instead, and change nothing.
func TestChainMergeTopFailsOnSnapshot(t *testing.T) {
	for _, dir := range []MergeDirection{MergeUp, MergeDown} {
		t.Run(string(dir), func(t *testing.T) {
			img, want := onlineImage(t)
			c := img.Chain()
			files := c.Deltas()
			fired := false
			progress := func(done, total int64) {
				if !fired {
					fired = true
					if err := c.Snapshot(files[3]+".next", nil); err != nil {
						t.Error(err)
					}
				}
			}
			_, err := c.Merge(context.Background(), files[2], files[3], PairMergeOptions{Direction: dir, Progress: progress},
				func([]string) error { t.Error("record called"); return nil })
			if !errors.Is(err, ErrBusy) {
				t.Fatalf("merge across a snapshot: %v, want ErrBusy", err)
			}
			if c.Depth() != 5 {
				t.Fatalf("depth %d", c.Depth())
			}
			if got := mustRead(t, c, 0, len(want)); !bytes.Equal(got, want) {
				t.Fatal("content changed")
			}
			snap, err := OpenChain(files, ChainOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer snap.Close()
			if got := mustRead(t, snap, 0, len(want)); !bytes.Equal(got, want) {
				t.Fatal("the snapshot's content changed")
			}
		})
	}
}
