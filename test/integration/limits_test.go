package integration

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// TestSnapshotAtTheDepthLimit (issue 9 item 6): a volume whose chain is
// already 1024 deltas deep (ploop's limit) answers ResourceExhausted to
// CreateSnapshot offline and, once staged, online too: the serving process
// types the error and the driver maps it, where it used to answer Internal.
// The chain is built in the pool directly (1023 CreateSnapshot calls would
// take a while and prove nothing more).
func TestSnapshotAtTheDepthLimit(t *testing.T) {
	h := newHarness(t)
	v := h.createVolume("deep", 64*mi, mountCap("ext4"), nil)
	dir := filepath.Join(h.root, "volumes", v.id)
	desc, err := image.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 1024; i++ {
		delta := filepath.Join(h.root, "deltas", fmt.Sprintf("%032x.hds", i))
		if err := image.CreateDelta(delta, 64*mi, image.DefaultClusterSize); err != nil {
			t.Fatal(err)
		}
		desc.AddTop(image.NewGUID(), delta)
	}
	if err := desc.Write(dir); err != nil {
		t.Fatal(err)
	}
	snapshotWants(t, h, v, "offline", codes.ResourceExhausted)
	h.stagePublish(v)
	files := writeFiles(t, v.target, "data", 2, fileSize)
	snapshotWants(t, h, v, "online", codes.ResourceExhausted)
	checkFiles(t, v.target, files)
	h.unpublishUnstage(v)
	h.deleteVolume(v.id)
	h.checkNoLeaks()
}

func snapshotWants(t *testing.T, h *harness, v *vol, name string, want codes.Code) {
	t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: v.id, Name: name})
	if status.Code(err) != want {
		t.Fatalf("%s snapshot of a 1024-deep chain: %v, want %v", name, err, want)
	}
}

// TestDescriptorNamingAFileOutsideTheRoot (issue 9 item 9): a volume whose
// descriptor names a delta outside the storage root (here a valid delta in
// another directory, which the serving process would happily serve) is a
// corrupt volume: NodeStage and CreateSnapshot answer DataLoss and nothing
// is attached; deleting it leaves the outside file alone.
func TestDescriptorNamingAFileOutsideTheRoot(t *testing.T) {
	h := newHarness(t)
	v := h.createVolume("tampered", 64*mi, mountCap("ext4"), nil)
	outside := filepath.Join(t.TempDir(), "elsewhere.hds")
	if err := image.CreateDelta(outside, 64*mi, image.DefaultClusterSize); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(h.root, "volumes", v.id)
	desc, err := image.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	desc.AddTop(image.NewGUID(), outside)
	if err := desc.Write(dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err = h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.cap})
	if status.Code(err) != codes.DataLoss {
		h.staged[v.staging] = v.id
		t.Fatalf("stage of a volume naming %s: %v, want DataLoss", outside, err)
	}
	snapshotWants(t, h, v, "of-tampered", codes.DataLoss)
	if pids := servingProcesses(h.runDir); len(pids) > 0 {
		t.Fatalf("a serving process runs for a corrupt volume: %v", pids)
	}
	h.deleteVolume(v.id)
	if _, err := image.ReadHeader(outside); err != nil {
		t.Fatalf("the file outside the root: %v", err)
	}
	h.checkNoLeaks()
}
