package ploopstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopstore"
)

// detached is an Attacher with nothing attached: every merge is offline.
type detached struct{}

var errNoAttach = errors.New("not attaching in this test")

func (detached) Attach(context.Context, string) (string, error) { return "", errNoAttach }
func (detached) Detach(context.Context, string) error           { return nil }
func (detached) Attached(context.Context, string) (string, bool, error) {
	return "", false, nil
}
func (detached) Snapshot(context.Context, string, string) (string, error) { return "", errNoAttach }
func (detached) Grow(context.Context, string, int64) error                { return errNoAttach }
func (detached) Merge(context.Context, string, volume.MergeRequest) (volume.MergeResult, error) {
	return volume.MergeResult{}, errNoAttach
}
func (detached) Health(context.Context, string) (string, error) { return "", nil }

func writeVol(t *testing.T, dir string, off int64, p []byte) {
	t.Helper()
	img, err := image.OpenDir(dir, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.Chain().WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

func readVol(t *testing.T, dir string, n int) []byte {
	t.Helper()
	img, err := image.OpenDir(dir, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, n)
	if _, err := img.Chain().ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func fill(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*13) + byte(i>>10)
	}
	return b
}

// waitMerges waits for the background merges DeleteSnapshot/DeleteVolume
// started (the RPC waits for them while its context lasts; this is the
// belt to those braces).
func waitMerges(t *testing.T, m *volume.Manager, n int64) volume.MergeStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := m.MergeStats()
		if st.Offline >= n || time.Now().After(deadline) {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDeleteSnapshotMergesRealImages: DeleteSnapshot merges the deleted
// snapshot's delta with its neighbour through the real store (offline: the
// volume is not attached), the volume reads the same, its chain is one
// delta shorter and the dropped file is gone; with the volume deleted,
// deleting a snapshot merges the snapshot chains' deltas (MergeDeltas) and
// the snapshot left still restores.
func TestDeleteSnapshotMergesRealImages(t *testing.T) {
	const cs = 64 << 10
	ctx := context.Background()
	root := t.TempDir()
	m, err := volume.Open(ctx, volume.Options{Root: root, Store: ploopstore.New(t.TempDir()), Attacher: detached{}, SweepGrace: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v, err := m.CreateVolume(ctx, volume.CreateVolumeRequest{Name: "v", RequiredBytes: 8 << 20, ClusterSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "volumes", v.ID)
	writeVol(t, dir, 0, fill(1, 4*cs))
	s1, err := m.CreateSnapshot(ctx, v.ID, "s1")
	if err != nil {
		t.Fatal(err)
	}
	writeVol(t, dir, 2*cs, fill(2, 4*cs))
	s2, err := m.CreateSnapshot(ctx, v.ID, "s2")
	if err != nil {
		t.Fatal(err)
	}
	writeVol(t, dir, 5*cs, fill(3, 3*cs))
	want := readVol(t, dir, 8*cs)

	if err := m.DeleteSnapshot(ctx, s1.ID); err != nil {
		t.Fatal(err)
	}
	st := waitMerges(t, m, 1)
	if st.Offline != 1 || st.BytesCopied == 0 || st.Failed != 0 {
		t.Fatalf("merge stats %+v", st)
	}
	if files := chainOf(t, dir); len(files) != 2 {
		t.Fatalf("chain %v after deleting s1", files)
	}
	if got := readVol(t, dir, 8*cs); !bytes.Equal(got, want) {
		t.Fatal("the volume's content changed")
	}
	if n := deltaFiles(t, root); n != 2 {
		t.Fatalf("%d delta files, want 2 (the dropped one collected)", n)
	}

	// Snapshot chains only: s3 on top of s2, then the volume goes.
	writeVol(t, dir, 0, fill(4, cs))
	want3 := readVol(t, dir, 8*cs)
	s3, err := m.CreateSnapshot(ctx, v.ID, "s3")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSnapshot(ctx, s2.ID); err != nil {
		t.Fatal(err)
	}
	if st := waitMerges(t, m, 2); st.Offline != 2 || st.Failed != 0 {
		t.Fatalf("merge stats %+v", st)
	}
	if n := deltaFiles(t, root); n != 1 {
		t.Fatalf("%d delta files, want 1: s3's chain merged into one delta", n)
	}
	r, err := m.CreateVolume(ctx, volume.CreateVolumeRequest{Name: "r", RequiredBytes: 8 << 20, ClusterSize: cs, SourceSnapshotID: s3.ID})
	if err != nil {
		t.Fatal(err)
	}
	if got := readVol(t, filepath.Join(root, "volumes", r.ID), 8*cs); !bytes.Equal(got, want3) {
		t.Fatal("the restore of s3 differs")
	}
}

func chainOf(t *testing.T, dir string) []string {
	t.Helper()
	d, err := image.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.ChainFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func deltaFiles(t *testing.T, root string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "deltas"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
