package image

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// pairImage builds dir with chain [parent, child, top] on the real file
// system: the parent holds clusters 0..5, the child overwrites 1 and 3,
// adds 7 (a partial write: the rest of the cluster is a hole) and discards
// cluster 4 (an empty cluster hiding the parent's), and the volume grew
// after the parent was frozen. It returns the paths and the expected content.
func pairImage(t *testing.T, dir string) (parent, child string, want []byte) {
	t.Helper()
	const cs = 64 << 10
	if err := Create(dir, 1<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, 0, pattern(1, 6*cs))
	snapshotDir(t, dir)
	if err := GrowDir(dir, 8<<20); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, img.Chain(), cs, pattern(2, cs))
	mustWrite(t, img.Chain(), 3*cs+4096, pattern(3, 8192))
	mustWrite(t, img.Chain(), 100*cs+8192, pattern(4, 4096))
	if err := img.Chain().Discard(4*cs, cs); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	snapshotDir(t, dir)
	writeDir(t, dir, 5*cs, pattern(5, 4096))
	files := mustFiles(t, dir)
	return files[0], files[1], readDir(t, dir, 8<<20)
}

func TestMergeDirPairBothDirections(t *testing.T) {
	for _, dir := range []MergeDirection{MergeDown, MergeUp, MergeAuto} {
		t.Run(string(dir)+"auto", func(t *testing.T) {
			d := t.TempDir()
			parent, child, want := pairImage(t, d)
			var calls int
			var last [2]int64
			st, err := MergeDirPair(context.Background(), d, parent, child, PairMergeOptions{
				Direction: dir, Progress: func(done, total int64) { calls++; last = [2]int64{done, total} }})
			if err != nil {
				t.Fatal(err)
			}
			if last[0] != last[1] || last[1] == 0 {
				t.Fatalf("last progress %d of %d", last[0], last[1])
			}
			if dir != MergeAuto && st.Direction != dir || st.Direction == MergeAuto || calls == 0 {
				t.Fatalf("stats %+v, %d progress calls", st, calls)
			}
			t.Logf("%+v", st)
			if got := readDir(t, d, 8<<20); !bytes.Equal(got, want) {
				t.Fatal("merge changed the content")
			}
			files := mustFiles(t, d)
			if len(files) != 2 || files[0] != st.Kept || files[1] == st.Dropped {
				t.Fatalf("chain %v after keeping %s, dropping %s", files, st.Kept, st.Dropped)
			}
			if _, err := os.Stat(st.Dropped); err != nil {
				t.Fatalf("the dropped delta must stay for the caller: %v", err)
			}
			if r, err := Check(d, false); err != nil || !r.Clean() {
				t.Fatalf("check: %v %+v", err, r)
			}
			// The up merge copies the parent's clusters 0, 2, 5 (4 is
			// hidden, 1 and 3 shadowed); the down merge the child's 1, 3, 4, 100.
			if st.BytesCopied == 0 || st.BytesCopied > 4*(64<<10) {
				t.Fatalf("copied %d bytes", st.BytesCopied)
			}
		})
	}
}

func TestMergeDirPairRefusesWhatIsNotAPair(t *testing.T) {
	d := t.TempDir()
	parent, child, _ := pairImage(t, d)
	top := mustFiles(t, d)[2]
	ctx := context.Background()
	if _, err := MergeDirPair(ctx, d, parent, top, PairMergeOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not adjacent: %v", err)
	}
	if _, err := MergeDirPair(ctx, d, child, parent, PairMergeOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reversed: %v", err)
	}
	if _, err := MergeDirPair(ctx, d, parent, child, PairMergeOptions{Direction: "sideways"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad direction: %v", err)
	}
	shared := func(p string) (bool, error) { return p == parent, nil }
	if _, err := MergeDirPair(ctx, d, parent, child, PairMergeOptions{Shared: shared}); !errors.Is(err, ErrShared) {
		t.Fatalf("shared parent: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := MergeDirPair(cancelled, d, parent, child, PairMergeOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if len(mustFiles(t, d)) != 3 {
		t.Fatal("a refused merge changed the chain")
	}
}

// TestMergeDeltaFiles: two frozen deltas of no image; the kept one reads as
// the pair did.
func TestMergeDeltaFiles(t *testing.T) {
	for _, dir := range []MergeDirection{MergeDown, MergeUp} {
		t.Run(string(dir), func(t *testing.T) {
			d := t.TempDir()
			parent, child, want := pairImage(t, d)
			// Read the pair alone: the top's one write is left out.
			c, err := OpenChain([]string{parent, child}, ChainOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			want = mustRead(t, c, 0, len(want))
			c.Close()
			st, err := MergeDeltaFiles(context.Background(), parent, child, PairMergeOptions{Direction: dir})
			if err != nil {
				t.Fatal(err)
			}
			k, err := OpenChain([]string{st.Kept}, ChainOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			if got := mustRead(t, k, 0, len(want)); !bytes.Equal(got, want) {
				t.Fatal("kept delta does not read as the pair")
			}
			if r, err := Check(st.Kept, false); err != nil || !r.Clean() {
				t.Fatalf("check: %v %+v", err, r)
			}
		})
	}
}

// TestMergeDirDirection: the CLI's MergeDir takes a direction and removes
// the dropped file.
func TestMergeDirDirection(t *testing.T) {
	d := t.TempDir()
	parent, child, want := pairImage(t, d)
	desc, _ := ReadDescriptor(d)
	chain, _ := desc.Chain()
	if err := MergeDir(d, chain[0].GUID, MergeOptions{Direction: MergeUp}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(parent); !os.IsNotExist(err) {
		t.Fatalf("the dropped parent is still there: %v", err)
	}
	if files := mustFiles(t, d); len(files) != 2 || files[0] != child {
		t.Fatalf("chain %v", files)
	}
	if got := readDir(t, d, 8<<20); !bytes.Equal(got, want) {
		t.Fatal("content changed")
	}
}

// TestInteropMergedDeltaQemuReads: merging a chain down to one delta (the
// parent grown, clusters appended and overwritten in place, or the child
// filled up) leaves a delta qemu-img checks clean and reads as the chain
// read before.
func TestInteropMergedDeltaQemuReads(t *testing.T) {
	interopRequireTools(t)
	for _, dir := range []MergeDirection{MergeDown, MergeUp} {
		t.Run(string(dir), func(t *testing.T) {
			tmp := t.TempDir()
			d := filepath.Join(tmp, "img")
			pairImage(t, d)
			before := filepath.Join(tmp, "before.raw")
			size := interopExport(t, mustFiles(t, d), before)
			ctx := context.Background()
			for len(mustFiles(t, d)) > 1 {
				files := mustFiles(t, d)
				if _, err := MergeDirPair(ctx, d, files[0], files[1], PairMergeOptions{Direction: dir}); err != nil {
					t.Fatal(err)
				}
			}
			last := mustFiles(t, d)[0]
			interopQemuCheck(t, last)
			after := filepath.Join(tmp, "qemu.raw")
			interopQemuConvert(t, last, after)
			interopCompareFiles(t, before, after, size)
		})
	}
}
