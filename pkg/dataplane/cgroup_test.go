package dataplane

import (
	"slices"
	"testing"

	"github.com/moby/sys/mountinfo"
)

func TestCgroupTargets(t *testing.T) {
	mounts := []*mountinfo.Info{
		{Mountpoint: "/sys/fs/cgroup/cpu,cpuacct", Root: "/", FSType: "cgroup", VFSOptions: "rw,cpu,cpuacct"},
		{Mountpoint: "/sys/fs/cgroup/memory", Root: "/", FSType: "cgroup", VFSOptions: "rw,memory"},
		{Mountpoint: "/sys/fs/cgroup/systemd", Root: "/", FSType: "cgroup", VFSOptions: "rw,xattr,name=systemd"},
		{Mountpoint: "/sys/fs/cgroup/unified", Root: "/", FSType: "cgroup2", VFSOptions: "rw"},
	}
	self := "4:memory:/pods/driver\n3:cpu,cpuacct:/\n2:name=systemd:/user.slice/s.scope\n0::/user.slice/s.scope\n"
	got, err := cgroupTargets(self, mounts, "dp")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/sys/fs/cgroup/memory/pods/dp", // beside the driver's, not inside it
		"/sys/fs/cgroup/cpu,cpuacct/dp", // the root's child
		"/sys/fs/cgroup/systemd/user.slice/dp",
		"/sys/fs/cgroup/unified/user.slice/dp",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("targets\n got %q\nwant %q", got, want)
	}
	if _, err := cgroupTargets("5:blkio:/x\n", mounts, "dp"); err == nil {
		t.Fatal("a hierarchy without a mount was accepted")
	}
	if _, err := MoveToOwnCgroup("../x"); err == nil {
		t.Fatal("a cgroup name with a slash was accepted")
	}
}
