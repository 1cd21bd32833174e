package attach

import (
	"errors"
	"fmt"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW from include/uapi/linux/fs.h (_IOWR('X', 119/120, int));
// x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// deviceMounts returns the mount points of the block device at path: the
// mounts whose superblock is that device (bind mounts of it included).
func deviceMounts(path string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("attach: stat %s: %w", path, err)
	}
	maj, min := int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Major != maj || m.Minor != min, false
	})
	if err != nil {
		return nil, fmt.Errorf("attach: mount table: %w", err)
	}
	out := make([]string, 0, len(mounts))
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

// deviceUnclaimed returns ErrBusy while a filesystem (or anyone else) holds
// the block device at path exclusively. It opens the device O_EXCL, which
// fails with EBUSY while it is mounted in any mount namespace, also one
// this process cannot see (the driver's, when the server runs in the data
// plane's container). Mount points it can see are named in the error.
func deviceUnclaimed(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("attach: open %s: %w", path, err)
	}
	where := "a filesystem or another exclusive user (in another mount namespace, or a process)"
	if points, _ := deviceMounts(path); len(points) > 0 {
		where = strings.Join(points, ", ")
	}
	return fmt.Errorf("%w: %s is mounted or claimed: %s; unmount it first", ErrBusy, path, where)
}

// isMountPoint reports whether path is a mount point in the mount table.
// It reads the table rather than stat'ing path, which fails on the mount of
// a dead FUSE server ("transport endpoint is not connected").
func isMountPoint(path string) (bool, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		return false, fmt.Errorf("attach: mount table: %w", err)
	}
	return len(mounts) > 0, nil
}

// frozen is a filesystem frozen with FIFREEZE; thaw undoes it.
type frozen struct {
	fd   int
	path string
}

// freeze freezes the filesystem mounted at mountPoint: it flushes all dirty
// data and blocks new writes until thaw. EBUSY (already frozen by someone
// else) is an error: we would thaw a freeze that is not ours.
func freeze(mountPoint string) (*frozen, error) {
	fd, err := unix.Open(mountPoint, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach: open %s: %w", mountPoint, err)
	}
	if err := unix.IoctlSetInt(fd, ioctlFIFREEZE, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach: FIFREEZE %s: %w", mountPoint, err)
	}
	return &frozen{fd: fd, path: mountPoint}, nil
}

func (f *frozen) thaw() error {
	err := unix.IoctlSetInt(f.fd, ioctlFITHAW, 0)
	unix.Close(f.fd)
	if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: not frozen
		return fmt.Errorf("attach: FITHAW %s: %w", f.path, err)
	}
	return nil
}

// freezeAll freezes every filesystem mounted from device (a filesystem
// mounted twice is one superblock: freeze it once). On error, what was
// frozen is thawed again.
func freezeAll(device string) ([]*frozen, error) {
	points, err := deviceMounts(device)
	if err != nil || len(points) == 0 {
		return nil, err
	}
	f, err := freeze(points[0])
	if err != nil {
		return nil, err
	}
	return []*frozen{f}, nil
}

func thawAll(fs []*frozen) error {
	var errs []error
	for _, f := range fs {
		errs = append(errs, f.thaw())
	}
	return errors.Join(errs...)
}
