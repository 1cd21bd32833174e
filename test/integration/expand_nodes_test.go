package integration

import (
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// TestExpandThroughAnotherNodesController (issue 9 item 8): csi-resizer has
// no per-node mode, so the resizer that acts on a claim may run on a node
// that does not hold the volume. Two drivers run here as two nodes (own
// --node-id, --root, --run-dir and socket). ControllerExpandVolume on node
// B for volumes of node A answers the new capacity without their files;
// NodeExpandVolume on node A grows the image, the record and the
// filesystem: a mounted xfs online, a raw block device, and an ext4 staged
// but not published offline (the order kubelet expands an unused volume in;
// this machine cannot grow a mounted ext4).
func TestExpandThroughAnotherNodesController(t *testing.T) {
	a := newHarnessWith(t, t.TempDir(), harnessOptions{nodeID: "node-a"})
	b := newHarnessWith(t, t.TempDir(), harnessOptions{nodeID: "node-b"})

	fs := a.createVolume("grow-xfs", 320*mi, mountCap("xfs"), nil)
	a.stagePublish(fs)
	files := writeFiles(t, fs.target, "before", 4, fileSize)
	old := statfs(t, fs.target)
	controllerExpandOn(t, b, fs, 640*mi)
	nodeExpand(t, a, fs, fs.target, 640*mi)
	nodeExpand(t, a, fs, fs.target, 640*mi) // retried: nothing left to do, still OK
	grown := statfs(t, fs.target)
	if grown.total < old.total+250*mi {
		t.Fatalf("xfs is %d MiB after growing from %d MiB to 640 MiB", grown.total>>20, old.total>>20)
	}
	big := filepath.Join(fs.target, "bigger-than-before")
	if sum := writeStream(t, big, old.total+16*mi); fileSum(t, big) != sum {
		t.Fatal("content differs after writing beyond the old size")
	}
	checkFiles(t, fs.target, files)
	wantCapacity(t, a, fs.id, 640*mi)

	blk := a.createVolume("grow-block", 64*mi, blockCap(), nil)
	a.stagePublish(blk)
	data := randomBytes(1 << 20)
	blockWrite(t, blk.target, 0, data)
	controllerExpandOn(t, b, blk, 128*mi)
	nodeExpand(t, a, blk, blk.target, 128*mi)
	if n := deviceSize(t, blk.target); n != 128*mi {
		t.Fatalf("block device is %d MiB after expansion, want 128", n>>20)
	}
	blockWrite(t, blk.target, 127*mi, data)
	wantCapacity(t, a, blk.id, 128*mi)

	ext := a.createVolume("grow-ext4", 128*mi, mountCap("ext4"), nil)
	a.stagePublish(ext)
	extFiles := writeFiles(t, ext.target, "ext", 2, fileSize)
	a.unpublish(ext)
	controllerExpandOn(t, b, ext, 512*mi)
	nodeExpand(t, a, ext, ext.staging, 512*mi)
	a.publish(ext)
	if got := statfs(t, ext.target); got.total < 450*mi {
		t.Fatalf("ext4 is %d MiB after expansion to 512 MiB", got.total>>20)
	}
	checkFiles(t, ext.target, extFiles)

	for _, v := range []*vol{fs, blk, ext} {
		a.unpublishUnstage(v)
		a.deleteVolume(v.id)
	}
	a.checkNoLeaks()
	b.checkNoLeaks()
}

func controllerExpandOn(t *testing.T, h *harness, v *vol, size int64) {
	t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := h.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: v.cap})
	if err != nil || resp.GetCapacityBytes() != size || !resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume on %s for %s: %v, %v", h.nodeID, v.id, resp, err)
	}
}

// nodeExpand calls NodeExpandVolume as kubelet does: no capability.
func nodeExpand(t *testing.T, h *harness, v *vol, path string, size int64) {
	t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: path,
		StagingTargetPath: v.staging, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
	if err != nil || resp.GetCapacityBytes() != size {
		t.Fatalf("NodeExpandVolume on %s for %s: %v, %v", h.nodeID, v.id, resp, err)
	}
}

func wantCapacity(t *testing.T, h *harness, id string, size int64) {
	t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil || resp.GetVolume().GetCapacityBytes() != size {
		t.Fatalf("ControllerGetVolume %s on %s: %v, %v; want capacity %d", id, h.nodeID, resp, err, size)
	}
}

func deviceSize(t *testing.T, path string) int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	n, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	if err != nil {
		t.Fatal(err)
	}
	return int64(n)
}
