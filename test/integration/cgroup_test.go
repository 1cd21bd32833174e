package integration

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/dataplane"
)

// cgroup is a cgroup beside the test's own on every hierarchy, in which a
// driver runs the way a container runtime runs a container.
type cgroup struct {
	name string
	dirs []string
}

// newCgroup creates a uniquely named cgroup; the caller removes it
// (removeCgroups) once its processes are gone.
func newCgroup(t *testing.T, prefix string) *cgroup {
	t.Helper()
	name := fmt.Sprintf("%s-%08x", prefix, rand.Uint32())
	dirs, err := dataplane.OwnCgroupDirs(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := dataplane.MakeCgroups(dirs); err != nil {
		t.Fatal(err)
	}
	return &cgroup{name: name, dirs: dirs}
}

// pids lists the processes in the cgroup.
func (c *cgroup) pids() []int {
	b, _ := os.ReadFile(filepath.Join(c.dirs[0], "cgroup.procs"))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// kill kills every process of the cgroup with SIGKILL, as a container
// runtime stops a container, until none is left.
func (c *cgroup) kill(t *testing.T) []int {
	t.Helper()
	var killed []int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		pids := c.pids()
		if len(pids) == 0 {
			return killed
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed = append(killed, pid)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v of cgroup %s survive SIGKILL", pids, c.name)
		}
	}
}

// removeCgroups removes the cgroups called name beside ours (once empty).
func removeCgroups(t *testing.T, name string) {
	dirs, err := dataplane.OwnCgroupDirs(name)
	if err != nil {
		t.Errorf("cleanup: cgroups %s: %v", name, err)
		return
	}
	for _, d := range dirs {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if time.Now().After(deadline) {
				procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				var who []string
				for _, p := range strings.Fields(string(procs)) {
					cmd, _ := os.ReadFile("/proc/" + p + "/cmdline")
					who = append(who, p+": "+strings.ReplaceAll(string(cmd), "\x00", " "))
				}
				t.Errorf("cleanup: remove cgroup %s: %v; processes: %q", d, err, who)
				break
			}
		}
	}
}

// inCgroup reports whether process pid is in a cgroup called name on any
// hierarchy.
func inCgroup(pid int, name string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasSuffix(line, "/"+name) {
			return true
		}
	}
	return false
}
