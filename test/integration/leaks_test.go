package integration

import (
	"bufio"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(t *testing.T, dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Logf("mountinfo: %v", err)
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// loopsUnder lists loop devices whose backing file is below dir, from
// /sys/block/loop*/loop/backing_file.
func loopsUnder(dir string) map[string]string {
	out := map[string]string{}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if strings.HasPrefix(backing, dir+"/") {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
			out[dev] = backing
		}
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

// ourProcesses lists the PIDs running our freshly built binary (its path is
// unique to this test run), except the ones in skip.
func ourProcesses(skip ...int) []int {
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
		skipped := false
		for _, s := range skip {
			skipped = skipped || s == pid
		}
		if !skipped {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killServers kills serving processes our driver started that detach did not
// stop: only processes of our own temp binary, by PID.
func killServers(t *testing.T) {
	for _, pid := range ourProcesses() {
		t.Logf("cleanup: killing leftover serving process %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// checkNoLeaks: after every volume and snapshot is gone, nothing may remain
// in the root, the kernel or the process table.
func (h *harness) checkNoLeaks() {
	t := h.t
	t.Helper()
	for _, sub := range []string{"volumes", "deltas", "meta/volumes", "meta/snapshots", "meta/staged"} {
		entries, err := os.ReadDir(filepath.Join(h.root, sub))
		if err != nil {
			t.Errorf("read %s: %v", sub, err)
		}
		for _, e := range entries {
			t.Errorf("leaked %s/%s", sub, e.Name())
		}
	}
	for dev, backing := range loopsUnder(h.tmp) {
		t.Errorf("leaked loop device %s on %s", dev, backing)
	}
	for _, m := range mountsUnder(t, h.tmp) {
		t.Errorf("leaked mount %s", m)
	}
	if pids := ourProcesses(h.proc.Process.Pid); len(pids) > 0 {
		t.Errorf("serving processes left: %v", pids)
	}
}
