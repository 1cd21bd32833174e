package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(t *testing.T, dir string) []string {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Logf("mountinfo: %v", err)
		return nil
	}
	out := make([]string, 0, len(mounts))
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// loopsUnder lists loop devices whose backing file is below dir.
func loopsUnder(dir string) map[string]string {
	out := map[string]string{}
	infos, _ := loopdev.ListUnder(dir)
	for _, in := range infos {
		out[in.Path] = in.BackingFile
	}
	return out
}

func detachLoops(t *testing.T, dir string) {
	for dev := range loopsUnder(dir) {
		if err := loopdev.Detach(dev); err != nil {
			t.Logf("cleanup: detach %s: %v", dev, err)
		}
	}
}

// servingProcesses lists the PIDs of serving processes of our freshly built
// binary (its path is unique to this test run) whose runtime directory is
// runDir: "csi-ploop image attach ... --run-dir RUNDIR DIR", and of data
// plane supervisors of runDir ("csi-ploop dataplane run ... --run-dir
// RUNDIR").
func servingProcesses(runDir string) []int {
	if binary == "" {
		return nil
	}
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || strings.TrimSuffix(exe, " (deleted)") != binary {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if err == nil && (slices.Contains(args, "attach") || slices.Contains(args, "dataplane")) && slices.Contains(args, runDir) {
			if stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); !strings.Contains(string(stat), ") Z ") {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// killServers kills the serving processes of runDir that detach did not
// stop: only processes of our own temp binary, by PID.
func killServers(t *testing.T, runDir string) {
	for _, pid := range servingProcesses(runDir) {
		t.Logf("cleanup: killing leftover serving process %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// waitGone waits until no serving process of runDir runs any more.
func waitGone(t *testing.T, runDir string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); len(servingProcesses(runDir)) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("serving processes %v survived SIGKILL", servingProcesses(runDir))
		}
	}
}

// noteFuseConns records the FUSE connections of the serving processes
// mounted now, to check at the end that none outlived its volume.
func (h *harness) noteFuseConns() {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(h.runDir))
	if err != nil {
		h.t.Errorf("mountinfo: %v", err)
		return
	}
	h.fuseMu.Lock()
	defer h.fuseMu.Unlock()
	for _, m := range mounts {
		if strings.HasPrefix(m.FSType, "fuse") {
			h.fuseConns[fuseConnName(m.Major, m.Minor)] = true
		}
	}
}

// fuseConnName is a connection's directory name under
// /sys/fs/fuse/connections: the kernel's dev_t of the FUSE superblock.
func fuseConnName(major, minor int) string { return strconv.Itoa(major<<20 | minor) }

// leakedFuseConns lists the recorded connections that still exist while no
// mount in view has their device: a connection whose mount was detached
// lazily but whose users never went (the number may since belong to another
// mount of someone else, which is then in view and not reported).
func (h *harness) leakedFuseConns() []string {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return []string{err.Error()}
	}
	mounted := map[string]bool{}
	for _, m := range mounts {
		mounted[fuseConnName(m.Major, m.Minor)] = true
	}
	var out []string
	h.fuseMu.Lock()
	defer h.fuseMu.Unlock()
	for c := range h.fuseConns {
		if _, err := os.Stat(filepath.Join("/sys/fs/fuse/connections", c)); err == nil && !mounted[c] {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// checkNoLeaks: after every volume and snapshot is gone, nothing may remain
// in the root, the kernel or the process table. What the kernel releases
// asynchronously (a loop device freed on its last close, the FUSE
// connection behind it) gets a bounded while to go before it counts.
func (h *harness) checkNoLeaks() {
	t := h.t
	t.Helper()
	for _, sub := range []string{"volumes", "deltas", "meta/volumes", "meta/snapshots", "meta/staged", "meta/published"} {
		entries, err := os.ReadDir(filepath.Join(h.root, sub))
		if err != nil {
			t.Errorf("read %s: %v", sub, err)
		}
		for _, e := range entries {
			t.Errorf("leaked %s/%s", sub, e.Name())
		}
	}
	var leaks []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		leaks = h.kernelLeaks()
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, l := range leaks {
		t.Errorf("leaked %s", l)
	}
}

// kernelLeaks lists loop devices, mounts, FUSE connections and serving
// processes of this harness that still exist.
func (h *harness) kernelLeaks() []string {
	var out []string
	for dev, backing := range loopsUnder(h.tmp) {
		out = append(out, fmt.Sprintf("loop device %s on %s", dev, backing))
	}
	for _, m := range mountsUnder(h.t, h.tmp) {
		out = append(out, "mount "+m)
	}
	for _, c := range h.leakedFuseConns() {
		out = append(out, "FUSE connection "+c+" (fusectl) of a serving process")
	}
	if pids := servingProcesses(h.runDir); len(pids) > 0 {
		out = append(out, fmt.Sprintf("serving processes %v", pids))
	}
	return out
}
