// Package integration drives the real csi-ploop binary over its CSI socket, as
// kubelet and the sidecars would, with real images, loop devices and mounts.
// It needs root; it runs in `make test` (go test ./...).
package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const (
	mi       = int64(1) << 20
	fileSize = 192 << 10
)

// TestStory is the life of a few volumes, verifying data at every step and,
// at the end, that nothing leaked: files in the root, loop devices, mounts or
// serving processes.
func TestStory(t *testing.T) {
	h := newHarness(t)
	a := h.createVolume("vol-a", 256*mi, mountCap("ext4"), nil)
	h.stagePublish(a)
	aFiles := writeFiles(t, a.target, "base", 16, fileSize)
	checkFiles(t, a.target, aFiles)

	aFiles = append(aFiles, restartCheck(t, h, a)...)
	snap, win := snapshotWhileWriting(t, h, a)
	aFiles = append(aFiles, win.written...)
	checkFiles(t, a.target, aFiles)

	b := h.createVolume("vol-b", 256*mi, mountCap("ext4"), fromSnapshot(snap.GetSnapshotId()))
	h.stagePublish(b)
	snapFiles := win.check(t, b.target)
	bOnly := writeFiles(t, b.target, "only-b", 2, fileSize)
	assertAbsent(t, a.target, bOnly)

	c := h.createVolume("vol-c", 256*mi, mountCap("ext4"), fromVolume(a.id))
	h.stagePublish(c)
	checkFiles(t, c.target, aFiles)
	aOnly := writeFiles(t, a.target, "after-clone", 2, fileSize)
	assertAbsent(t, c.target, aOnly)
	aFiles = append(aFiles, aOnly...)
	checkStats(t, h, a)

	expandOnline(t, h)
	blockVolume(t, h)
	if t.Failed() {
		return
	}
	teardown(t, h, a, b, c, snap.GetSnapshotId(), snapFiles, append(snapFiles, bOnly...))
	h.checkNoLeaks()
}

// restartCheck stops the driver while a is published: I/O on the mount goes on
// (the serving process is separate); a new driver on the same root lists a.
func restartCheck(t *testing.T, h *harness, a *vol) []fileRec {
	h.stopDriver()
	if h.lastExit != 0 {
		t.Errorf("driver exited with status %d on SIGTERM", h.lastExit)
	}
	files := writeFiles(t, a.target, "driver-down", 4, fileSize)
	h.startDriver()
	if !h.listVolumeIDs()[a.id] {
		t.Fatalf("volume %s not listed after the driver restarted", a.id)
	}
	files = append(files, writeFiles(t, a.target, "restarted", 4, fileSize)...)
	checkFiles(t, a.target, files)
	return files
}

// snapWindow is what a snapshot taken under writes must hold: the files
// before the writer started and a consistent prefix of the writer's files.
type snapWindow struct {
	before, written               []fileRec
	completedBefore, startedAfter int
}

// snapshotWhileWriting takes an online snapshot of a while a goroutine keeps
// writing and fsyncing files to it; every write must succeed.
func snapshotWhileWriting(t *testing.T, h *harness, a *vol) (*csi.Snapshot, *snapWindow) {
	win := &snapWindow{before: listFiles(t, a.target)}
	w := startWriter(a.target)
	w.waitDone(t, 3)
	win.completedBefore, _, _ = w.counts()
	snap := h.createSnapshot(a.id, "snap-a")
	_, win.startedAfter, _ = w.counts()
	w.waitDone(t, win.startedAfter+2) // keep writing after the snapshot too
	win.written = w.finish(t)
	t.Logf("snapshot taken while writing: %d files complete before the call, %d begun when it returned",
		win.completedBefore, win.startedAfter)
	return snap, win
}

// check verifies a restore of the snapshot at dir and returns the complete
// files it holds (the last writer file may be partial, so it is left out).
func (win *snapWindow) check(t *testing.T, dir string) []fileRec {
	t.Helper()
	checkFiles(t, dir, win.before)
	n := checkSnapshotFiles(t, dir, win.written, win.completedBefore, win.startedAfter)
	t.Logf("the restore holds %d writer files", n)
	return append(slices.Clone(win.before), win.written[:max(n-1, 0)]...)
}

// listFiles reads back every regular file of dir (lost+found aside).
func listFiles(t *testing.T, dir string) []fileRec {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []fileRec
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fileRec{name: e.Name(), data: data})
	}
	return out
}

func assertAbsent(t *testing.T, dir string, files []fileRec) {
	t.Helper()
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f.name)); err == nil {
			t.Errorf("%s/%s exists: volumes are not isolated", dir, f.name)
		}
	}
}

func checkStats(t *testing.T, h *harness, v *vol) {
	t.Helper()
	u := h.stats(v, v.target)
	st := statfs(t, v.target)
	if u.GetTotal() != st.total || u.GetUsed() <= 0 || u.GetAvailable() <= 0 {
		t.Errorf("NodeGetVolumeStats %s: %v; statfs total %d", v.id, u, st.total)
	}
}

type fsSize struct{ total, avail int64 }

func statfs(t *testing.T, path string) fsSize {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return fsSize{total: int64(st.Blocks) * st.Bsize, avail: int64(st.Bavail) * st.Bsize}
}

// expandOnline grows a mounted xfs volume. Not ext4: resize2fs needs
// CAP_SYS_RESOURCE to grow a mounted ext4, which this VM's root lacks (EPERM).
// 320 MiB: mkfs.xfs refuses filesystems under 300 MB.
func expandOnline(t *testing.T, h *harness) {
	e := h.createVolume("vol-e", 320*mi, mountCap("xfs"), nil)
	h.stagePublish(e)
	files := writeFiles(t, e.target, "e", 4, fileSize)
	old := statfs(t, e.target)
	ctx, cancel := rpcCtx()
	defer cancel()
	cr := &csi.CapacityRange{RequiredBytes: 640 * mi}
	cresp, err := h.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: e.id, CapacityRange: cr, VolumeCapability: e.cap})
	if err != nil || cresp.GetCapacityBytes() < 640*mi || !cresp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume: %v, %v", cresp, err)
	}
	nresp, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: e.id,
		VolumePath: e.staging, StagingTargetPath: e.staging, CapacityRange: cr, VolumeCapability: e.cap})
	if err != nil || nresp.GetCapacityBytes() < 640*mi {
		t.Fatalf("NodeExpandVolume: %v, %v", nresp, err)
	}
	grown := statfs(t, e.target)
	if grown.total < old.total+200*mi {
		t.Fatalf("filesystem total %d after growing from %d to 640Mi", grown.total, old.total)
	}
	big := filepath.Join(e.target, "bigger-than-before")
	sum := writeStream(t, big, old.total+16*mi) // could not fit before the expansion
	if fileSum(t, big) != sum {
		t.Errorf("%s: content differs after writing beyond the old size", big)
	}
	checkFiles(t, e.target, files)
	if u := h.stats(e, e.target); u.GetTotal() != statfs(t, e.target).total {
		t.Errorf("NodeGetVolumeStats after expansion: %v", u)
	}
	cloneMountedXfs(t, h, e, files, map[string][32]byte{filepath.Base(big): sum})
	h.unpublishUnstage(e)
	h.deleteVolume(e.id)
}

// cloneMountedXfs clones the grown xfs volume e and mounts the clone beside
// it: the clone has e's filesystem UUID, which xfs refuses without nouuid.
func cloneMountedXfs(t *testing.T, h *harness, e *vol, files []fileRec, sums map[string][32]byte) {
	c := h.createVolume("vol-e-clone", 640*mi, mountCap("xfs"), fromVolume(e.id))
	h.stagePublish(c)
	checkFiles(t, c.target, files)
	for name, sum := range sums {
		if fileSum(t, filepath.Join(c.target, name)) != sum {
			t.Errorf("clone of %s: %s differs", e.id, name)
		}
	}
	h.unpublishUnstage(c)
	h.deleteVolume(c.id)
}

// blockVolume writes and reads a raw block volume at several offsets, and
// again after it was detached and attached anew.
func blockVolume(t *testing.T, h *harness) {
	d := h.createVolume("vol-d", 64*mi, blockCap(), nil)
	h.stagePublish(d)
	if fi, err := os.Stat(d.target); err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("block target %s: %v, %v", d.target, fi, err)
	}
	writes := map[int64][]byte{
		0:               randomBytes(64 << 10),
		mi - 8<<10:      randomBytes(16 << 10), // straddles two 1 MiB clusters
		5*mi + 4096:     randomBytes(4096),
		64*mi - 64<<10:  randomBytes(64 << 10), // the last bytes
		20*mi + 512:     randomBytes(512),      // sector, not block, aligned
		32*mi + 3*mi/2:  randomBytes(int(mi)),
		48*mi + 123<<10: randomBytes(7 << 10),
	}
	for off, data := range writes {
		blockWrite(t, d.target, off, data)
	}
	checkBlock(t, d.target, writes)
	if u := h.stats(d, d.target); u.GetTotal() != 64*mi {
		t.Errorf("NodeGetVolumeStats of block volume: %v", u)
	}
	h.unpublishUnstage(d)
	h.stagePublish(d)
	checkBlock(t, d.target, writes)
	if got := blockRead(t, d.target, 2*mi, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("never-written block does not read as zeros")
	}
	h.unpublishUnstage(d)
	h.deleteVolume(d.id)
}

func checkBlock(t *testing.T, dev string, writes map[int64][]byte) {
	t.Helper()
	for off, data := range writes {
		if got := blockRead(t, dev, off, len(data)); !bytes.Equal(got, data) {
			t.Errorf("%s at %d: %d bytes differ from what was written", dev, off, len(data))
		}
	}
}

// teardown deletes in an order that needs the delta GC to be right: the
// source volume before its snapshot and clone, the snapshot before its
// restore. After each deletion, the survivors are attached anew and read.
func teardown(t *testing.T, h *harness, a, b, c *vol, snapID string, snapFiles, bFiles []fileRec) {
	cFiles := listFiles(t, c.target)
	for _, v := range []*vol{a, b, c} {
		h.unpublishUnstage(v)
	}
	h.deleteVolume(a.id)
	h.stagePublish(c)
	checkFiles(t, c.target, cFiles)
	f := h.createVolume("vol-f", 256*mi, mountCap("ext4"), fromSnapshot(snapID))
	h.stagePublish(f)
	checkFiles(t, f.target, snapFiles)
	h.unpublishUnstage(f)
	h.deleteVolume(f.id)
	h.deleteSnapshot(snapID)
	h.stagePublish(b)
	checkFiles(t, b.target, bFiles)
	h.unpublishUnstage(b)
	h.deleteVolume(b.id)
	checkFiles(t, c.target, cFiles)
	h.unpublishUnstage(c)
	h.deleteVolume(c.id)
}
