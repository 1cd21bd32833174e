//go:build linux

// Package loopdev attaches regular files to Linux loop block devices and
// manages those devices, talking to the kernel directly through ioctls on
// /dev/loop-control and /dev/loopN (golang.org/x/sys/unix).
//
// It never runs losetup: the CSI driver must not depend on the util-linux
// version (or presence) in its container image, and ioctls give typed errors
// (EBUSY, ENXIO, EINVAL) that the callers need to tell races from failures.
//
// Facts about the kernel (6.x) this package is built around:
//   - LOOP_CTL_GET_FREE only reports a free device; it does not reserve it.
//     Concurrent attachers may be told the same number and all but one get
//     EBUSY from LOOP_CONFIGURE, so Attach retries with a fresh number.
//   - LOOP_CLR_FD does not fail with EBUSY: if the device is still open
//     (mounted, or held by another process) the kernel only sets
//     LO_FLAGS_AUTOCLEAR and detaches on the last close. Detach reports that
//     case as ErrBusy so the caller knows the device is still there.
//   - The kernel may refuse (EINVAL) or silently drop direct I/O depending
//     on version, backing file system and block size; 6.18 drops it silently
//     in LOOP_CONFIGURE (e.g. on ramfs). Info.DirectIO always reports what
//     the kernel actually does, read back from sysfs after attaching.
package loopdev

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Sentinel errors; test with errors.Is. Returned errors wrap these together
// with the path and the underlying errno.
var (
	// ErrNotFound: the loop device node or its sysfs entry does not exist.
	ErrNotFound = errors.New("loop device not found")
	// ErrNotAttached: the device exists but has no backing file (ENXIO).
	ErrNotAttached = errors.New("loop device not attached")
	// ErrBusy: the device is still open by someone else (typically a mount).
	ErrBusy = errors.New("loop device busy")
	// ErrNoFreeDevice: Attach lost the race for a free device too many times.
	ErrNoFreeDevice = errors.New("no free loop device")
	// ErrDirectIOUnsupported: direct I/O was required but the kernel refused it.
	ErrDirectIOUnsupported = errors.New("direct I/O not supported for backing file")
	// ErrInvalidOptions: Options (or arguments) rejected before asking the kernel.
	ErrInvalidOptions = errors.New("invalid loop options")
	// ErrNotLoopDevice: the path is not a loop block device.
	ErrNotLoopDevice = errors.New("not a loop device")
)

// Options control how a backing file is attached.
type Options struct {
	// DirectIO asks the kernel to bypass the page cache for the backing file
	// (LO_FLAGS_DIRECT_IO). If the kernel refuses, Attach falls back to
	// buffered I/O unless RequireDirectIO is set; check Info.DirectIO.
	DirectIO bool
	// RequireDirectIO makes a refused DirectIO an error
	// (ErrDirectIOUnsupported) instead of a fallback to buffered I/O.
	RequireDirectIO bool
	// ReadOnly attaches read-only: the backing file is opened O_RDONLY and
	// the device rejects writes.
	ReadOnly bool
	// BlockSize is the logical block size of the device: a power of two
	// >= 512. 0 leaves the choice to the kernel, which uses 512 unless
	// direct I/O needs the backing device's larger logical block size.
	BlockSize uint32
}

// Device identifies a loop device.
type Device struct {
	Path   string // /dev/loopN
	Number int    // N
}

// Info describes an attached loop device as the kernel reports it.
type Info struct {
	Device
	// BackingFile is the kernel's path of the backing file, with the
	// " (deleted)" suffix removed (see BackingDeleted).
	BackingFile string
	// BackingDeleted is true when the backing file was unlinked after attach.
	BackingDeleted bool
	// DirectIO is true when the kernel really does direct I/O to the file.
	DirectIO bool
	// DirectIOFallback is set by Attach only: DirectIO was requested but
	// the kernel refused it and the device runs buffered.
	DirectIOFallback bool
	ReadOnly         bool
	// AutoClear: the kernel detaches the device on its last close
	// (set by Detach on a device that is still open).
	AutoClear bool
	SizeBytes int64  // current device size
	BlockSize uint32 // logical block size
	Offset    uint64 // offset into the backing file
	SizeLimit uint64 // 0 = up to the end of the backing file
}

const (
	loopControlPath = "/dev/loop-control"
	sysBlockDir     = "/sys/block"
	devDir          = "/dev"
	loopMajor       = 7 // LOOP_MAJOR in include/uapi/linux/major.h
	deletedSuffix   = " (deleted)"
	sectorSize      = 512
)

// deviceForNumber builds the Device for /dev/loopN.
func deviceForNumber(n int) Device {
	return Device{Path: filepath.Join(devDir, "loop"+strconv.Itoa(n)), Number: n}
}

// parseLoopName extracts N from "loopN"; it rejects partitions ("loop0p1")
// and anything else that is not a whole loop device.
func parseLoopName(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, "loop")
	if !ok || digits == "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 || strconv.Itoa(n) != digits {
		return 0, false
	}
	return n, true
}

// validate rejects options the kernel would refuse with a bare EINVAL, so
// that the caller gets an error that names the problem.
func (o Options) validate() error {
	bs := o.BlockSize
	if bs != 0 && (bs < sectorSize || bs&(bs-1) != 0) {
		return fmt.Errorf("%w: block size %d is not a power of two >= 512", ErrInvalidOptions, bs)
	}
	if o.RequireDirectIO && !o.DirectIO {
		return fmt.Errorf("%w: RequireDirectIO without DirectIO", ErrInvalidOptions)
	}
	return nil
}
