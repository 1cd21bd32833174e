package integration

import "testing"

// TestRestoreIntoLargerVolume: a snapshot restored into a larger volume
// carries the source's smaller filesystem; staging must grow it to the
// volume size (the Kubernetes storage suite checks exactly this). xfs grows
// after it is mounted.
func TestRestoreIntoLargerVolume(t *testing.T) {
	restoreIntoLarger(t, "xfs", 320*mi, 640*mi)
}

// TestRestoreExt4IntoLargerVolumeStagesAtFullSize (issue 9 item 2): a 256
// MiB ext4 snapshot restored into a 1 GiB volume is staged at 1 GiB on the
// first NodeStage, although this machine cannot grow a mounted ext4 (no
// CAP_SYS_RESOURCE): ext4 grows before it is mounted. Before, the first
// stage failed with Internal and left the mount, and its retry answered OK
// over a 223 MiB filesystem for good.
func TestRestoreExt4IntoLargerVolumeStagesAtFullSize(t *testing.T) {
	restoreIntoLarger(t, "ext4", 256*mi, 1024*mi)
}

// restoreIntoLarger restores a snapshot of a srcSize volume into a bigSize
// one, stages it once and checks the filesystem has (about) bigSize, the
// data, and NodeGetVolumeStats agreeing.
func restoreIntoLarger(t *testing.T, fsType string, srcSize, bigSize int64) {
	h := newHarness(t)
	src := h.createVolume("small-"+fsType, srcSize, mountCap(fsType), nil)
	h.stagePublish(src)
	files := writeFiles(t, src.target, "data", 4, fileSize)
	snap := h.createSnapshot(src.id, "small-snap")
	small := statfs(t, src.target)

	big := h.createVolume("big-"+fsType, bigSize, mountCap(fsType), fromSnapshot(snap.GetSnapshotId()))
	h.stagePublish(big)
	checkFiles(t, big.target, files)
	got := statfs(t, big.target)
	if got.total < bigSize*7/8 {
		t.Fatalf("restored %s is %d MiB (the source's %d MiB): not grown to the %d MiB volume",
			fsType, got.total>>20, small.total>>20, bigSize>>20)
	}
	if u := h.stats(big, big.target); u.GetTotal() != got.total {
		t.Fatalf("NodeGetVolumeStats total %d, statfs %d", u.GetTotal(), got.total)
	}
	writeFiles(t, big.target, "more", 2, fileSize)

	h.unpublishUnstage(big)
	h.unpublishUnstage(src)
	h.deleteVolume(big.id)
	h.deleteSnapshot(snap.GetSnapshotId())
	h.deleteVolume(src.id)
	h.checkNoLeaks()
}
