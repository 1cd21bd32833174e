//go:build linux

package loopdev

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// detachGrace is how long Detach waits for short-lived openers (udev's
	// blkid probe after every change event) to close the device before it
	// reports ErrBusy. The kernel detaches on their close either way.
	detachGrace     = 200 * time.Millisecond
	detachPollEvery = 5 * time.Millisecond
)

// Detach unbinds the backing file from the loop device at path
// (LOOP_CLR_FD). It is idempotent: a device that is not attached, or a node
// that does not exist, is not an error.
//
// If the device is still open elsewhere (mounted, or held by a process),
// the kernel cannot detach it now; it sets autoclear instead and detaches
// on the last close. Detach then returns an error wrapping ErrBusy: the
// device and its backing file stay in use until that close, e.g. a FUSE
// mount behind it cannot be unmounted yet.
func Detach(path string) error {
	dev, err := deviceFromPath(path)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var backing string // what we detach; "" if it cannot be told
	if info, err := statusByNumber(dev.Number); err == nil {
		backing = info.BackingFile
	}
	if err := clearFD(dev); err != nil {
		return err
	}
	return waitDetached(dev, backing, statusByNumber)
}

// clearFD issues LOOP_CLR_FD. The device is opened read-only because a
// read-only device refuses write opens, and root needs no write mode here.
func clearFD(dev Device) error {
	fd, err := unix.Open(dev.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) {
		return nil // removed, or being torn down
	}
	if err != nil {
		return fmt.Errorf("loopdev: open %s: %w", dev.Path, err)
	}
	defer unix.Close(fd) // the kernel completes the detach on this close
	err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
	switch {
	case err == nil, errors.Is(err, unix.ENXIO):
		return nil
	case errors.Is(err, unix.EBUSY): // Linux defers instead; keep ErrBusy meaningful anyway
		return fmt.Errorf("loopdev: detach %s: %w (still open, e.g. mounted): %w", dev.Path, ErrBusy, err)
	default:
		return fmt.Errorf("loopdev: LOOP_CLR_FD %s: %w", dev.Path, err)
	}
}

// waitDetached confirms through sysfs (status) that the backing file is
// gone, allowing short-lived openers a grace period. A device that shows
// another backing file than the one detached (when known) was detached and
// attached again by someone else meanwhile (device numbers are reused at
// once): ours is gone.
func waitDetached(dev Device, backing string, status func(int) (Info, error)) error {
	deadline := time.Now().Add(detachGrace)
	for {
		info, err := status(dev.Number)
		if errors.Is(err, ErrNotAttached) || errors.Is(err, ErrNotFound) {
			return nil
		}
		if err == nil && backing != "" && info.BackingFile != backing {
			return nil
		}
		if err == nil && time.Now().After(deadline) {
			return fmt.Errorf("loopdev: detach %s (backing %s): %w: still open, "+
				"the kernel will detach it on the last close (autoclear=%t)",
				dev.Path, info.BackingFile, ErrBusy, info.AutoClear)
		}
		time.Sleep(detachPollEvery)
	}
}

// SetCapacity makes the kernel re-read the size of the backing file
// (LOOP_SET_CAPACITY), e.g. after the file was grown.
func SetCapacity(path string) error {
	return withDevice(path, func(dev Device, fd int) error {
		if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
			return fmt.Errorf("loopdev: LOOP_SET_CAPACITY %s: %w", dev.Path, ioctlErr(err))
		}
		return nil
	})
}

// Size returns the size of the block device at path in bytes (BLKGETSIZE64);
// 0 for a loop device that is not attached.
func Size(path string) (int64, error) {
	var size uint64
	err := withDevice(path, func(dev Device, fd int) error {
		var err error
		if size, err = unix.IoctlGetUint64(fd, unix.BLKGETSIZE64); err != nil {
			return fmt.Errorf("loopdev: BLKGETSIZE64 %s: %w", dev.Path, err)
		}
		return nil
	})
	return int64(size), err
}

// withDevice runs fn with a read-only descriptor of the loop device at path.
func withDevice(path string, fn func(Device, int) error) error {
	dev, err := deviceFromPath(path)
	if err != nil {
		return err
	}
	fd, err := unix.Open(dev.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopdev: open %s: %w", dev.Path, ioctlErr(err))
	}
	defer unix.Close(fd)
	return fn(dev, fd)
}

// ioctlErr adds the package sentinel to errnos that have one.
func ioctlErr(err error) error {
	switch {
	case errors.Is(err, unix.ENXIO):
		return fmt.Errorf("%w: %w", ErrNotAttached, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}
