package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRecoverAfterServingProcessesDie: the serving processes of a staged
// filesystem volume and a staged block volume are killed (-9) while the
// driver is down, which leaves their loop devices dead under the mounts.
// The restarted driver reconciles: it attaches both again, mounts the
// filesystem afresh and binds the published targets again, so the same
// target paths work with the data flushed before the kill.
func TestRecoverAfterServingProcessesDie(t *testing.T) {
	h := newHarness(t)
	fsVol := h.createVolume("rec-fs", 256*mi, mountCap("ext4"), nil)
	h.stagePublish(fsVol)
	files := writeFiles(t, fsVol.target, "before-kill", 8, fileSize)
	blk := h.createVolume("rec-blk", 64*mi, blockCap(), nil)
	h.stagePublish(blk)
	data := randomBytes(3 << 20)
	blockWrite(t, blk.target, 1<<20+512, data)

	h.stopDriver()
	killServers(t, h.runDir)
	waitGone(t, h.runDir)
	if _, err := os.ReadFile(filepath.Join(fsVol.target, files[0].name)); err == nil {
		// Cached pages may still answer; a fresh write + fsync must not.
		if err := writeDurable(fsVol.target, "while-dead", []byte("x")); err == nil {
			t.Fatal("I/O still works with the serving process killed: the test kills nothing")
		}
	}

	h.startDriver() // reconciles the staged volumes
	checkFiles(t, fsVol.target, files)
	files = append(files, writeFiles(t, fsVol.target, "after-recovery", 4, fileSize)...)
	checkFiles(t, fsVol.target, files)
	if got := blockRead(t, blk.target, 1<<20+512, len(data)); !bytes.Equal(got, data) {
		t.Fatal("block volume lost data across the recovery")
	}

	h.unpublishUnstage(fsVol)
	h.unpublishUnstage(blk)
	h.deleteVolume(fsVol.id)
	h.deleteVolume(blk.id)
	h.checkNoLeaks()
}

// TestNodePluginKilledWhileAPodHoldsTheVolume (issue 9 item 10): the node
// plugin dies with all its processes (as when its container is killed)
// while a pod has the filesystem mounted through its own bind of the target
// (a mount the driver cannot see, here one under podView). The pod's mount
// keeps the dead loop device busy, so its cleanup is refused; the restarted
// driver must bring the volume back all the same, and a new pod's publish
// must bind the volume, never the empty staging directory on the node's own
// disk.
func TestNodePluginKilledWhileAPodHoldsTheVolume(t *testing.T) {
	h := newHarness(t)
	v := h.createVolume("held", 256*mi, mountCap("ext4"), nil)
	h.stagePublish(v)
	files := writeFiles(t, v.target, "before", 4, fileSize)
	podView := filepath.Join(h.tmp, "pod-view")
	if err := os.MkdirAll(podView, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(v.target, podView, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(podView, unix.MNT_DETACH) })

	h.killDriver()
	h.startDriver() // reconciles: the pod's mount holds the old, dead device

	second := &vol{id: v.id, cap: v.cap, staging: v.staging, target: filepath.Join(h.tmp, "pods", "second", "target")}
	h.publish(second)
	checkFiles(t, second.target, files)
	files = append(files, writeFiles(t, second.target, "after", 2, fileSize)...)
	checkFiles(t, v.target, files) // the old target was bound again too

	// The old pod goes: its mount of the dead device is the last user.
	if err := unix.Unmount(podView, 0); err != nil {
		t.Fatalf("unmount the old pod's view: %v", err)
	}
	h.unpublish(second)
	h.unpublishUnstage(v)
	h.deleteVolume(v.id)
	h.checkNoLeaks()
}

// TestStageRepairsAVolumeTheReconcileCouldNotBringBack: the driver restarts
// after the serving process died, but the volume's staging path could not
// be mounted again; publish refuses (FailedPrecondition) and the next
// NodeStage repairs it.
func TestStageRepairsAVolumeTheReconcileCouldNotBringBack(t *testing.T) {
	h := newHarness(t)
	v := h.createVolume("repair", 128*mi, mountCap("ext4"), nil)
	h.stagePublish(v)
	files := writeFiles(t, v.target, "before", 2, fileSize)
	h.unpublish(v)
	h.stopDriver()
	killServers(t, h.runDir)
	waitGone(t, h.runDir)
	// What a reconcile that failed half-way leaves: the dead staging mount
	// gone, the volume still recorded as staged.
	if err := unix.Unmount(v.staging, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	h.startDriver() // its reconcile may bring it back; either way:
	if err := unix.Unmount(v.staging, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
		t.Fatal(err)
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.cap})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish over an unmounted staging path: %v, want FailedPrecondition", err)
	}
	h.stage(v)
	h.publish(v)
	checkFiles(t, v.target, files)
	h.unpublishUnstage(v)
	h.deleteVolume(v.id)
	h.checkNoLeaks()
}
