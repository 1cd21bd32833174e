package image

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// hookFS is the real file system with a callback after every Open.
type hookFS struct {
	*OSFS
	afterOpen func(path string)
}

func (h *hookFS) Open(path string, writable bool) (File, error) {
	f, err := h.OSFS.Open(path, writable)
	if err == nil {
		h.afterOpen(path)
	}
	return f, err
}

func writeDir(t *testing.T, dir string, off int64, p []byte) {
	t.Helper()
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, img.Chain(), off, p)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

func readDir(t *testing.T, dir string, n int) []byte {
	t.Helper()
	img, err := OpenDir(dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return mustRead(t, img.Chain(), 0, n)
}

func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	g, err := SnapshotDir(dir, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func noneShared(string) (bool, error) { return false, nil }

// TestMergeDirLocksBeforeReadingDescriptor: a snapshot taken by another
// process after MergeDir has read the descriptor would be dropped by the
// descriptor MergeDir writes. The lock must be held before the read, so
// such a snapshot waits (ErrBusy) instead of being lost.
func TestMergeDirLocksBeforeReadingDescriptor(t *testing.T) {
	const cs = 64 << 10
	dir := t.TempDir()
	if err := Create(dir, 4<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, 0, pattern(1, 2*cs))
	merged := snapshotDir(t, dir)
	writeDir(t, dir, cs, pattern(2, cs))

	var racer string
	var racerErr error
	fired := false
	// The hook runs between opening the descriptor and reading it: the
	// snapshot's rename does not change what the open file holds.
	fsys := &hookFS{OSFS: NewOSFS(false), afterOpen: func(path string) {
		if !fired && filepath.Base(path) == DescriptorFile {
			fired = true // another process snapshots the image right now
			racer, racerErr = SnapshotDir(dir, SnapshotOptions{})
		}
	}}
	if err := MergeDir(dir, merged, MergeOptions{FS: fsys, Shared: noneShared}); err != nil {
		t.Fatal(err)
	}
	if !fired {
		t.Fatal("the descriptor was never read through the hook")
	}
	desc, err := ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case racerErr == nil:
		// racer names the frozen delta; a new top must be above it.
		if _, ok := desc.image(racer); !ok || sameGUID(desc.Snapshots.TopGUID, racer) {
			t.Fatalf("snapshot %s, taken while the merge ran, is gone from the descriptor", racer)
		}
	case !errors.Is(racerErr, ErrBusy):
		t.Fatalf("concurrent snapshot: %v, want ErrBusy", racerErr)
	}
	if _, ok := desc.image(merged); ok {
		t.Fatal("merged snapshot still listed")
	}
	want := append(pattern(1, cs), pattern(2, cs)...)
	if got := readDir(t, dir, 2*cs); !bytes.Equal(got, want) {
		t.Fatal("merge changed the content")
	}
}

// referencedBy is a MergeOptions.Shared that knows the chains of dirs.
func referencedBy(t *testing.T, dirs ...string) func(string) (bool, error) {
	refs := map[string]bool{}
	for _, d := range dirs {
		for _, f := range mustFiles(t, d) {
			refs[filepath.Clean(f)] = true
		}
	}
	return func(p string) (bool, error) { return refs[p], nil }
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestMergeDirNeverModifiesSharedDelta: a clone made from a snapshot reads
// the snapshot's delta. Merging that snapshot away in the origin image
// would write the child's data into it and change the clone's content.
func TestMergeDirNeverModifiesSharedDelta(t *testing.T) {
	const cs = 64 << 10
	origin, clone := t.TempDir(), filepath.Join(t.TempDir(), "clone")
	if err := Create(origin, 4<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	base := pattern(1, 3*cs)
	writeDir(t, origin, 0, base)
	shot := snapshotDir(t, origin)
	writeDir(t, origin, cs, pattern(2, cs))
	if err := CreateOnChain(clone, []string{filepath.Join(origin, RootDeltaFile)}, 4<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(origin, RootDeltaFile)
	before := fileHash(t, shared)

	err := MergeDir(origin, shot, MergeOptions{Shared: referencedBy(t, clone)})
	if !errors.Is(err, ErrShared) {
		t.Fatalf("merge into a delta the clone reads: %v, want ErrShared", err)
	}
	if fileHash(t, shared) != before {
		t.Fatal("the shared delta was modified")
	}
	if got := readDir(t, clone, 3*cs); !bytes.Equal(got, base) {
		t.Fatal("the clone's content changed")
	}
	if d, _ := ReadDescriptor(origin); len(d.Storage[0].Images) != 2 {
		t.Fatal("the origin's descriptor changed")
	}
	// Once the clone is gone, the same merge goes through.
	if err := MergeDir(origin, shot, MergeOptions{Shared: noneShared}); err != nil {
		t.Fatal(err)
	}
	want := append(append(pattern(1, cs), pattern(2, cs)...), base[2*cs:]...)
	if got := readDir(t, origin, 3*cs); !bytes.Equal(got, want) {
		t.Fatal("merge changed the origin's content")
	}
}

// TestMergeDirDefaultRefusesDeltasOutsideDir: without a predicate, a delta
// outside the directory (the base of a restore or clone) counts as shared;
// deltas inside it merge.
func TestMergeDirDefaultRefusesDeltasOutsideDir(t *testing.T) {
	const cs = 64 << 10
	pool, vol := t.TempDir(), t.TempDir()
	basePath := filepath.Join(pool, "base.hds")
	if err := CreateDelta(basePath, 4<<20, cs); err != nil {
		t.Fatal(err)
	}
	if err := CreateOnChain(vol, []string{basePath}, 4<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	desc, err := ReadDescriptor(vol)
	if err != nil {
		t.Fatal(err)
	}
	baseGUID := desc.Storage[0].Images[0].GUID
	writeDir(t, vol, 0, pattern(3, cs))
	inside := snapshotDir(t, vol)
	writeDir(t, vol, cs, pattern(4, cs))
	before := fileHash(t, basePath)
	if err := MergeDir(vol, baseGUID, MergeOptions{}); !errors.Is(err, ErrShared) {
		t.Fatalf("merge into a delta outside the directory: %v, want ErrShared", err)
	}
	if fileHash(t, basePath) != before {
		t.Fatal("the outside delta was modified")
	}
	if err := MergeDir(vol, inside, MergeOptions{}); err != nil {
		t.Fatalf("merge inside the directory: %v", err)
	}
	if got := readDir(t, vol, 2*cs); !bytes.Equal(got, append(pattern(3, cs), pattern(4, cs)...)) {
		t.Fatal("content changed")
	}
}
