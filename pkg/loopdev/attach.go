//go:build linux

package loopdev

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// maxAttachAttempts bounds how often Attach asks for a new free device
	// after another attacher won the race for the one it was offered.
	maxAttachAttempts = 64
	// maxRetryDelay caps the pause between attempts; the pause only matters
	// when something holds an unbound device exclusively, making
	// LOOP_CTL_GET_FREE offer the same busy device again and again.
	maxRetryDelay = 20 * time.Millisecond
)

// configureFunc is LOOP_CONFIGURE; tests substitute it to simulate kernels
// that answer EINVAL to direct I/O instead of silently dropping it.
type configureFunc func(fd int, cfg *unix.LoopConfig) error

// Attach binds backingFile to a free loop device and returns the device.
// It does not look for an existing device first: use Find for idempotency.
// If opts.DirectIO is refused by the kernel, the device runs buffered; use
// AttachInfo (or Status) to learn what the kernel really does.
func Attach(ctx context.Context, backingFile string, opts Options) (Device, error) {
	info, err := AttachInfo(ctx, backingFile, opts)
	return info.Device, err
}

// AttachInfo is Attach returning the device's Info: DirectIO reports
// whether direct I/O is in effect and DirectIOFallback whether it was
// requested but refused.
func AttachInfo(ctx context.Context, backingFile string, opts Options) (Info, error) {
	return attach(ctx, backingFile, opts, unix.IoctlLoopConfigure)
}

func attach(ctx context.Context, backingFile string, opts Options, configure configureFunc) (Info, error) {
	if err := opts.validate(); err != nil {
		return Info{}, err
	}
	abs, err := filepath.Abs(backingFile)
	if err != nil {
		return Info{}, fmt.Errorf("loopdev: attach %s: %w", backingFile, err)
	}
	fd, err := openBacking(abs, opts.ReadOnly)
	if err != nil {
		return Info{}, err
	}
	// The kernel takes its own reference to the file in LOOP_CONFIGURE.
	defer unix.Close(fd)
	cfg := newConfig(fd, abs, opts)
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return Info{}, fmt.Errorf("loopdev: attach %s: %w", abs, err)
		}
		n, err := getFree()
		if err != nil {
			return Info{}, err
		}
		info, err := configureDevice(deviceForNumber(n), cfg, opts, configure)
		if !lostRace(err) {
			return info, err
		}
		if attempt == maxAttachAttempts {
			return Info{}, fmt.Errorf("loopdev: attach %s: %w after %d attempts: %w",
				abs, ErrNoFreeDevice, attempt, err)
		}
		if err := sleepCtx(ctx, min(time.Duration(attempt)*time.Millisecond, maxRetryDelay)); err != nil {
			return Info{}, fmt.Errorf("loopdev: attach %s: %w", abs, err)
		}
	}
}

// lostRace tells whether another process got the offered device first:
// EBUSY from LOOP_CONFIGURE when it bound the device, ENXIO from open when
// it was removing the device (LOOP_CTL_REMOVE) at the same time.
func lostRace(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENXIO)
}

// openBacking opens the file the way the device will use it: the kernel
// makes the device read-only if the file is not open for writing, so a
// read-write attach of a read-only file fails here instead of silently
// producing a read-only device.
func openBacking(path string, readOnly bool) (int, error) {
	flags := unix.O_RDWR
	if readOnly {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("loopdev: open backing file %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("loopdev: stat backing file %s: %w", path, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFBLK {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: %s is not a regular file or block device", ErrInvalidOptions, path)
	}
	return fd, nil
}

func newConfig(backingFD int, path string, opts Options) unix.LoopConfig {
	cfg := unix.LoopConfig{Fd: uint32(backingFD), Size: opts.BlockSize}
	if opts.DirectIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	if opts.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	// For humans (LOOP_GET_STATUS64, old losetup); the kernel keeps 63 bytes
	// plus NUL. sysfs backing_file has the full path, which Find uses.
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], path)
	return cfg
}

// getFree asks /dev/loop-control for a free device, creating one if needed.
// The answer is only a hint: nothing reserves the device for us.
func getFree() (int, error) {
	ctl, err := unix.Open(loopControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("loopdev: open %s: %w", loopControlPath, err)
	}
	defer unix.Close(ctl)
	n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return 0, fmt.Errorf("loopdev: LOOP_CTL_GET_FREE: %w", err)
	}
	return n, nil
}

// configureDevice binds the backing file to dev and applies the direct I/O
// policy while it still holds the device open, so that a rollback cannot
// detach a device another attacher has bound in the meantime.
// An error for which lostRace is true means another process won dev.
func configureDevice(dev Device, cfg unix.LoopConfig, opts Options, configure configureFunc) (Info, error) {
	// The open mode matters: the kernel makes the device read-only when the
	// device itself is not open for writing.
	flags := unix.O_RDWR
	if opts.ReadOnly {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(dev.Path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return Info{}, fmt.Errorf("loopdev: open %s (no devtmpfs node?): %w", dev.Path, err)
	}
	defer unix.Close(fd)
	err = configure(fd, &cfg)
	// Some kernels answer EINVAL when the backing file system cannot do
	// O_DIRECT; try once more buffered and let the policy below decide.
	if errors.Is(err, unix.EINVAL) && cfg.Info.Flags&unix.LO_FLAGS_DIRECT_IO != 0 {
		cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
		err = configure(fd, &cfg)
	}
	if err != nil {
		return Info{}, fmt.Errorf("loopdev: LOOP_CONFIGURE %s: %w", dev.Path, err)
	}
	info, err := statusByNumber(dev.Number)
	if err == nil {
		info, err = applyDirectIOPolicy(info, opts)
	}
	if err != nil {
		rollback(fd)
		return Info{}, err
	}
	return info, nil
}

// applyDirectIOPolicy compares what the kernel does (sysfs loop/dio, which
// also catches kernels that drop direct I/O silently) with what was asked.
func applyDirectIOPolicy(info Info, opts Options) (Info, error) {
	if !opts.DirectIO || info.DirectIO {
		return info, nil
	}
	if opts.RequireDirectIO {
		return Info{}, fmt.Errorf("loopdev: %s on %s: %w", info.Path, info.BackingFile, ErrDirectIOUnsupported)
	}
	info.DirectIOFallback = true
	return info, nil
}

// rollback detaches a device we just configured. The kernel finishes the
// detach on the last close: ours, or that of a udev probe still holding it.
func rollback(fd int) {
	_ = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
