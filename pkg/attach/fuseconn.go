package attach

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Facts about a FUSE connection read from its descriptors, never by asking
// its server (there may be none: a crashed one, one not started yet).

// ConnectionEnded reports whether the FUSE connection of dev (a /dev/fuse
// descriptor) is dead: the kernel answers poll on it with POLLERR once the
// connection is aborted (fusectl, the watchdog, a request timeout). It
// never asks a FUSE server anything.
func ConnectionEnded(dev *os.File) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(dev.Fd()), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("attach: poll /dev/fuse: %w", err)
		}
		return fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0, nil
	}
}

// mountDevice is the device number (st_dev) of the mount whose root f is,
// read without asking the FUSE server (none may serve yet).
func mountDevice(f *os.File) (uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); err != nil {
		return 0, fmt.Errorf("attach: statx mount root: %w", err)
	}
	return unix.Mkdev(st.Dev_major, st.Dev_minor), nil
}

// onMount reports whether path is (in this mount namespace) the root of
// the mount with device dev. It never asks a FUSE server.
func onMount(path string, dev uint64) bool {
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_DONT_SYNC|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &st)
	return err == nil && unix.Mkdev(st.Dev_major, st.Dev_minor) == dev
}
