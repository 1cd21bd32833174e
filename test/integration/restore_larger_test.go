package integration

import "testing"

// TestRestoreIntoLargerVolume: a snapshot restored into a larger volume
// carries the source's smaller filesystem; staging must grow it to the
// volume size (the Kubernetes storage suite checks exactly this).
func TestRestoreIntoLargerVolume(t *testing.T) {
	h := newHarness(t)
	src := h.createVolume("small", 320*mi, mountCap("xfs"), nil)
	h.stagePublish(src)
	files := writeFiles(t, src.target, "data", 4, fileSize)
	snap := h.createSnapshot(src.id, "small-snap")
	small := statfs(t, src.target)

	big := h.createVolume("big", 640*mi, mountCap("xfs"), fromSnapshot(snap.GetSnapshotId()))
	h.stagePublish(big)
	checkFiles(t, big.target, files)
	if got := statfs(t, big.target); got.total < small.total+250*mi {
		t.Fatalf("restored filesystem is %d bytes, the source's %d: not grown to the 640 MiB volume", got.total, small.total)
	}

	h.unpublishUnstage(big)
	h.unpublishUnstage(src)
	h.deleteVolume(big.id)
	h.deleteSnapshot(snap.GetSnapshotId())
	h.deleteVolume(src.id)
	h.checkNoLeaks()
}
