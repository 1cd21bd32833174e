package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// MoveToOwnCgroup moves the calling process (all its threads) into a
// cgroup called name beside its current one, on every hierarchy listed in
// /proc/self/cgroup, and returns the cgroup directories. A container
// runtime stops a container by killing every process of its cgroup; the
// data plane started from the driver's cgroup (make run) must not be among
// them, so that killing the driver leaves every volume's I/O running.
// Children started afterwards (the serving processes) inherit the cgroup.
func MoveToOwnCgroup(name string) ([]string, error) {
	dirs, err := OwnCgroupDirs(name)
	if err != nil {
		return nil, err
	}
	if err := MakeCgroups(dirs); err != nil {
		return dirs, err
	}
	return dirs, JoinCgroups(dirs, os.Getpid())
}

// OwnCgroupDirs are the directories of the cgroups called name beside the
// calling process's, one per hierarchy in /proc/self/cgroup.
func OwnCgroupDirs(name string) ([]string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("dataplane: cgroup name %q", name)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return nil, fmt.Errorf("dataplane: mount table: %w", err)
	}
	return cgroupTargets(string(self), mounts, name)
}

// MakeCgroups creates the cgroup directories dirs (if missing); a new
// cgroup v1 cpuset gets its parent's CPUs and memory nodes.
func MakeCgroups(dirs []string) error {
	var errs []error
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, fmt.Errorf("create cgroup %s: %w", d, err))
			continue
		}
		if err := inheritCpuset(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	return nil
}

// JoinCgroups moves process pid (all its threads) into the cgroups dirs.
func JoinCgroups(dirs []string, pid int) error {
	var errs []error
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			errs = append(errs, fmt.Errorf("join cgroup %s: %w", d, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: own cgroup: %w", err)
	}
	return nil
}

// inheritCpuset gives a new cgroup v1 cpuset its parent's CPUs and memory
// nodes: a cpuset starts empty, and joining an empty one fails (ENOSPC).
func inheritCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			return nil // not a v1 cpuset hierarchy
		}
		if err != nil || strings.TrimSpace(string(cur)) != "" {
			continue
		}
		parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), parent, 0); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// cgroupTargets maps each line of /proc/self/cgroup ("ID:CONTROLLERS:PATH")
// to the directory of a cgroup called name that is a sibling of PATH
// (a child of the hierarchy's root when PATH is the root) on the mount of
// that hierarchy.
func cgroupTargets(procCgroup string, mounts []*mountinfo.Info, name string) ([]string, error) {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(procCgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		m := cgroupMount(mounts, parts[1])
		if m == nil {
			return nil, fmt.Errorf("dataplane: no mount of the cgroup hierarchy %q", line)
		}
		rel := parts[2]
		if m.Root != "/" { // a bind of a sub-tree (some container setups)
			rel = strings.TrimPrefix(rel, m.Root)
		}
		out = append(out, filepath.Join(m.Mountpoint, path.Dir(path.Clean("/"+rel)), name))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("dataplane: no cgroup hierarchy in /proc/self/cgroup")
	}
	return out, nil
}

// cgroupMount finds the mount of a hierarchy: cgroup2 for "" (the unified
// hierarchy), else the cgroup (v1) mount whose options name the same
// controllers ("cpu,cpuacct", "name=systemd").
func cgroupMount(mounts []*mountinfo.Info, controllers string) *mountinfo.Info {
	want := strings.Split(controllers, ",")
	for _, m := range mounts {
		if controllers == "" {
			if m.FSType == "cgroup2" {
				return m
			}
			continue
		}
		if m.FSType != "cgroup" {
			continue
		}
		opts := strings.Split(m.VFSOptions, ",")
		if !slices.ContainsFunc(want, func(c string) bool { return !slices.Contains(opts, c) }) {
			return m
		}
	}
	return nil
}
