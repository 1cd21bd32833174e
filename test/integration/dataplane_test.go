package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/csi-ploop/csi-ploop/internal/iocheck"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// The data plane's promises, against the real binaries through CSI: a
// mounted ext4 volume and a block volume, each with a verifying O_DIRECT
// writer, while (a) the driver is killed with every process of its cgroup
// and restarted, (b) each volume is handed over 20 times, (c) each serving
// process is killed 20 times. In all three: no I/O error, no wrong data,
// a clean filesystem and a clean image afterwards; the worst pause each
// writer saw is logged.

// dpVol is a published volume with a writer on it.
type dpVol struct {
	*vol
	dir      string // image directory
	writer   *iocheck.Writer
	baseline iocheck.Result // the writer's first second, undisturbed
}

// startVolumes creates, stages and publishes an ext4 and a block volume and
// starts a writer on each: on a file of the filesystem (fdatasync every 8
// writes) and on the block device.
func startVolumes(t *testing.T, h *harness) []*dpVol {
	t.Helper()
	fs := &dpVol{vol: h.createVolume("dp-fs", 256*mi, mountCap("ext4"), nil)}
	blk := &dpVol{vol: h.createVolume("dp-blk", 128*mi, blockCap(), nil)}
	for _, v := range []*dpVol{fs, blk} {
		h.stagePublish(v.vol)
		v.dir = filepath.Join(h.root, "volumes", v.id)
		opts := iocheck.Options{Path: v.target, Size: 64 * mi, Seed: uint64(time.Now().UnixNano())}
		if !v.block() {
			opts.Path, opts.SyncEvery = filepath.Join(v.target, "iocheck.dat"), 8
		}
		w, err := iocheck.Start(opts)
		if err != nil {
			t.Fatal(err)
		}
		v.writer = w
		t.Cleanup(func() { w.Stop() }) // a no-op after finishVolumes
	}
	time.Sleep(time.Second)
	for _, v := range []*dpVol{fs, blk} {
		v.baseline = v.writer.Reset()
	}
	return []*dpVol{fs, blk}
}

// serverOf is what a volume's serving process says about itself.
func serverOf(t *testing.T, h *harness, v *dpVol) attach.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := attach.NewClient(attach.AttachOptions{RunDir: h.runDir}).Status(ctx, v.dir)
	if err != nil {
		t.Fatalf("status of %s: %v", v.id, err)
	}
	return st
}

// mountIDs identifies the mounts of v (staging and target): a remount
// changes them.
func mountIDs(t *testing.T, v *dpVol) []int {
	t.Helper()
	var ids []int
	paths := []string{v.target}
	if !v.block() {
		paths = append(paths, v.staging)
	}
	for _, p := range paths {
		m, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(p))
		if err != nil || len(m) == 0 {
			t.Fatalf("no mount at %s: %v", p, err)
		}
		ids = append(ids, m[len(m)-1].ID)
	}
	return ids
}

// finishVolumes stops the writers and checks what they saw, tears the
// volumes down and checks the images and the filesystem. It returns the
// worst pause of each writer.
func finishVolumes(t *testing.T, h *harness, vols []*dpVol, what string) {
	t.Helper()
	for _, v := range vols {
		r := v.writer.Stop()
		kind := "block"
		if !v.block() {
			kind = "ext4"
		}
		t.Logf("%s, %s volume: %v", what, kind, r)
		t.Logf("WORST PAUSE %s, %s volume: %v (p99 %v; undisturbed first second: worst %v, p99 %v)",
			what, kind, r.Worst, r.Percentile(99), v.baseline.Worst, v.baseline.Percentile(99))
		if !r.OK() || !v.baseline.OK() {
			t.Errorf("%s, %s volume: %d I/O errors (first: %s), %d verify errors (first: %s); undisturbed: %v",
				what, kind, r.IOErrors, r.FirstIOError, r.VerifyErrors, r.FirstVerifyError, v.baseline)
		}
	}
	for _, v := range vols {
		h.unpublishUnstage(v.vol)
		checkImage(t, v.dir)
		if !v.block() {
			fsckVolume(t, h, v.dir)
		}
		h.deleteVolume(v.id)
	}
	h.stopDataplane()
	h.checkNoLeaks()
}

// checkImage runs "csi-ploop image check" on an image directory.
func checkImage(t *testing.T, dir string) {
	t.Helper()
	if out, err := exec.Command(binary, "image", "check", dir).CombinedOutput(); err != nil {
		t.Errorf("image check %s: %v\n%s", dir, err, out)
	}
}

// fsckVolume attaches an unstaged volume's image by itself and runs
// fsck.ext4 -n -f on it.
func fsckVolume(t *testing.T, h *harness, dir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := attach.NewClient(attach.AttachOptions{Binary: binary, RunDir: h.runDir})
	dev, err := c.Attach(ctx, dir)
	if err != nil {
		t.Fatalf("attach %s for fsck: %v", dir, err)
	}
	defer c.Detach(ctx, dir)
	if out, err := exec.Command("fsck.ext4", "-n", "-f", dev).CombinedOutput(); err != nil {
		t.Errorf("fsck.ext4 -n -f (%s): %v\n%s", dir, err, out)
	}
}

// TestDriverKilledWithItsCgroup (a): the driver, started by make run-built
// in a cgroup of its own, is killed with every process of that cgroup
// (SIGKILL, as a container runtime stops a container) and started again.
// The data plane, which moved itself out of that cgroup, keeps serving;
// the new driver adopts the attachments: same serving processes, same
// devices, same mounts (no re-attach, no remount).
func TestDriverKilledWithItsCgroup(t *testing.T) {
	h := newHarnessWith(t, t.TempDir(), harnessOptions{dataplane: true})
	vols := startVolumes(t, h)
	before := map[string]attach.Status{}
	mounts := map[string][]int{}
	for _, v := range vols {
		st := serverOf(t, h, v)
		if !st.Kept {
			t.Fatalf("%s: serving process not kept by the data plane: %+v", v.id, st)
		}
		if inCgroup(st.PID, h.cgroup.name) {
			t.Fatalf("%s: serving process %d is in the driver's cgroup", v.id, st.PID)
		}
		before[v.id], mounts[v.id] = st, mountIDs(t, v)
	}
	time.Sleep(time.Second)
	killed := h.cgroup.kill(t)
	<-h.exited
	h.proc, h.conn = nil, nil
	t.Logf("killed the driver's cgroup: %v", killed)
	time.Sleep(time.Second) // I/O goes on without a driver
	h.startDriver()         // reconciles
	for _, v := range vols {
		st := serverOf(t, h, v)
		if st.PID != before[v.id].PID || st.Device != before[v.id].Device || !st.Kept {
			t.Errorf("%s: serving process or device changed: %+v, was %+v", v.id, st, before[v.id])
		}
		if got := mountIDs(t, v); fmt.Sprint(got) != fmt.Sprint(mounts[v.id]) {
			t.Errorf("%s: mounted again (mount ids %v, were %v)", v.id, got, mounts[v.id])
		}
	}
	time.Sleep(time.Second)
	if log := h.readLog(); strings.Contains(log, "attaching it again") {
		t.Errorf("the restarted driver re-attached a volume:\n%s", log)
	}
	finishVolumes(t, h, vols, "(a) driver cgroup killed and restarted")
}

// TestHandover20Times (b): each volume is handed over to a new serving
// process 20 times while its writer runs.
func TestHandover20Times(t *testing.T) {
	h := newHarnessWith(t, t.TempDir(), harnessOptions{dataplane: true})
	vols := startVolumes(t, h)
	time.Sleep(500 * time.Millisecond)
	var slowest time.Duration
	for i := range 20 {
		for _, v := range vols {
			old := serverOf(t, h, v).PID
			t0 := time.Now()
			out, err := exec.Command(binary, "dataplane", "handover", "--socket", h.dataplaneSocket(), v.dir).CombinedOutput()
			took := time.Since(t0)
			if err != nil {
				t.Fatalf("hand-over %d of %s: %v\n%s", i+1, v.id, err, out)
			}
			slowest = max(slowest, took)
			if st := serverOf(t, h, v); st.PID == old || !st.Kept {
				t.Fatalf("hand-over %d of %s: server %+v, was %d", i+1, v.id, st, old)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("slowest hand-over command: %v", slowest)
	time.Sleep(500 * time.Millisecond)
	finishVolumes(t, h, vols, "(b) 20 hand-overs")
}

// TestServingProcessKilled20Times (c): each volume's serving process is
// killed with SIGKILL 20 times while its writer runs; the data plane
// starts a successor on the same FUSE connection each time. The kills are
// spaced by more than the restart policy's minimum uptime: these are
// crashes of healthy servers, not a crash loop.
func TestServingProcessKilled20Times(t *testing.T) {
	h := newHarnessWith(t, t.TempDir(), harnessOptions{dataplane: true})
	vols := startVolumes(t, h)
	var wg sync.WaitGroup
	errs := make(chan error, len(vols))
	for _, v := range vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- killRepeatedly(h, v, 20)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	finishVolumes(t, h, vols, "(c) 20 kills of the serving process")
}

// killRepeatedly kills v's serving process n times, each time waiting for
// its successor.
func killRepeatedly(h *harness, v *dpVol, n int) error {
	c := attach.NewClient(attach.AttachOptions{RunDir: h.runDir})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var worst time.Duration
	for i := range n {
		time.Sleep(700 * time.Millisecond)
		st, err := c.Status(ctx, v.dir)
		if err != nil {
			return fmt.Errorf("%s: status before kill %d: %w", v.id, i+1, err)
		}
		t0 := time.Now()
		if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
			return fmt.Errorf("%s: kill %d: %w", v.id, i+1, err)
		}
		for {
			next, err := c.Status(ctx, v.dir)
			if err != nil {
				return fmt.Errorf("%s: status after kill %d: %w", v.id, i+1, err)
			}
			if next.PID != st.PID {
				worst = max(worst, time.Since(t0))
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	h.t.Logf("%s: %d kills; slowest successor answered %v after the kill", v.id, n, worst)
	return nil
}

// TestReconcileThreeGenerations: the startup reconcile and the data plane
// with serving processes of three generations:
//   - A, started the way drivers without a data plane start them (a
//     detached child of the driver): the data plane adopts it when it
//     starts, the driver leaves it alone (no re-attach, no remount);
//   - B, started and kept by the data plane, which is then restarted: the
//     new one adopts it;
//   - C, whose serving process dies while no data plane keeps it (the data
//     plane lost it: EIO): the restarted driver attaches it again through
//     the data plane and mounts it afresh, with its flushed data.
func TestReconcileThreeGenerations(t *testing.T) {
	h := newHarness(t)
	a := h.createVolume("gen-a", 128*mi, mountCap("ext4"), nil)
	h.stagePublish(a)
	aFiles := writeFiles(t, a.target, "a", 4, fileSize)
	h.stopDriver()
	h.useDataplane()
	h.startDriver()
	b := h.createVolume("gen-b", 128*mi, mountCap("ext4"), nil)
	c := h.createVolume("gen-c", 128*mi, mountCap("ext4"), nil)
	h.stagePublish(b)
	h.stagePublish(c)
	bFiles := writeFiles(t, b.target, "b", 4, fileSize)
	cFiles := writeFiles(t, c.target, "c", 4, fileSize)
	vols := map[string]*dpVol{}
	for _, v := range []*vol{a, b, c} {
		vols[v.id] = &dpVol{vol: v, dir: filepath.Join(h.root, "volumes", v.id)}
	}
	before := map[string]attach.Status{}
	mounts := map[string][]int{}
	for id, v := range vols {
		before[id], mounts[id] = serverOf(t, h, v), mountIDs(t, v)
		if !before[id].Kept {
			t.Fatalf("%s: not kept by the data plane: %+v", id, before[id])
		}
	}

	h.stopDataplane() // the serving processes run on without a keeper
	if err := syscall.Kill(before[c.id].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.stopDriver()
	h.startDriver() // make run-built: a new data plane, then the driver's reconcile

	for _, id := range []string{a.id, b.id} {
		st := serverOf(t, h, vols[id])
		if st.PID != before[id].PID || st.Device != before[id].Device || !st.Kept {
			t.Errorf("%s: serving process changed or not adopted: %+v, was %+v", id, st, before[id])
		}
		if got := mountIDs(t, vols[id]); fmt.Sprint(got) != fmt.Sprint(mounts[id]) {
			t.Errorf("%s: mounted again", id)
		}
	}
	if st := serverOf(t, h, vols[c.id]); st.PID == before[c.id].PID || !st.Kept {
		t.Errorf("%s: not attached again through the data plane: %+v", c.id, st)
	}
	checkFiles(t, a.target, aFiles)
	checkFiles(t, b.target, bFiles)
	checkFiles(t, c.target, cFiles)
	cFiles = append(cFiles, writeFiles(t, c.target, "c-after", 2, fileSize)...)
	checkFiles(t, c.target, cFiles)
	for _, v := range []*vol{a, b, c} {
		h.unpublishUnstage(v)
		h.deleteVolume(v.id)
	}
	h.stopDataplane()
	h.checkNoLeaks()
}
