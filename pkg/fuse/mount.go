package fuse

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// MountOptions configure Mount.
type MountOptions struct {
	// Name appears as the file system type ("fuse.<Name>") and as the
	// source in the mount table; "" means plain "fuse".
	Name string
	// MaxRead bounds READ requests (mount option max_read); 0 leaves the
	// kernel's default (bounded by max_pages only).
	MaxRead int
}

// Mount opens /dev/fuse and mounts a FUSE file system on dir (which must
// exist) with that descriptor, but does not serve it: the kernel queues
// FUSE_INIT, which Init answers, in this process or in another one the
// descriptor is passed to. The mount is nosuid,nodev, owned by root
// (user_id=0,group_id=0: the caller must be root, no fusermount is used),
// with a directory as root.
//
// The returned file is the connection: the kernel keeps it alive while any
// process holds a descriptor of it, and aborts it when the last one closes.
// It is opened blocking; O_NONBLOCK would belong to the open file
// description every holder shares.
func Mount(dir string, opts MountOptions) (*os.File, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fuse: open /dev/fuse: %w", err)
	}
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		"rootmode=40000",
		"user_id=0",
		"group_id=0",
	}
	if opts.MaxRead > 0 {
		data = append(data, fmt.Sprintf("max_read=%d", opts.MaxRead))
	}
	fstype, source := "fuse", "fuse"
	if opts.Name != "" {
		if strings.ContainsAny(opts.Name, ", \t\n") {
			unix.Close(fd)
			return nil, fmt.Errorf("fuse: mount name %q", opts.Name)
		}
		fstype, source = "fuse."+opts.Name, opts.Name
	}
	err = unix.Mount(source, dir, fstype, unix.MS_NOSUID|unix.MS_NODEV, strings.Join(data, ","))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), nil
}

// ConnID is the name of the connection's directory under
// /sys/fs/fuse/connections: the kernel's internal dev_t (major<<20 |
// minor) of a file system's st_dev.
func ConnID(stDev uint64) uint64 {
	return uint64(unix.Major(stDev))<<20 | uint64(unix.Minor(stDev))
}
