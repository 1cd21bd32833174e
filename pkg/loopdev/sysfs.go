//go:build linux

package loopdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// List returns every attached loop device, ordered by number. It reads sysfs
// only, so it neither opens device nodes nor races with attach/detach into
// errors: a device that detaches while being read is simply left out.
func List() ([]Info, error) {
	entries, err := os.ReadDir(sysBlockDir)
	if err != nil {
		return nil, fmt.Errorf("loopdev: list %s: %w", sysBlockDir, err)
	}
	var infos []Info
	for _, e := range entries {
		n, ok := parseLoopName(e.Name())
		if !ok {
			continue
		}
		info, err := statusByNumber(n)
		if errors.Is(err, ErrNotAttached) || errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	slices.SortFunc(infos, func(a, b Info) int { return a.Number - b.Number })
	return infos, nil
}

// Status describes the loop device at path. It returns ErrNotAttached if the
// device has no backing file, ErrNotFound if there is no such device.
func Status(path string) (Info, error) {
	dev, err := deviceFromPath(path)
	if err != nil {
		return Info{}, err
	}
	return statusByNumber(dev.Number)
}

// statusByNumber reads /sys/block/loopN. The loop/ subdirectory exists only
// while a backing file is bound, which is how "not attached" is detected.
func statusByNumber(n int) (Info, error) {
	dev := deviceForNumber(n)
	base := filepath.Join(sysBlockDir, "loop"+strconv.Itoa(n))
	backing, err := readSysfs(base, "loop/backing_file")
	if errors.Is(err, fs.ErrNotExist) {
		if _, statErr := os.Stat(base); statErr != nil {
			return Info{}, fmt.Errorf("loopdev: %s: %w", dev.Path, ErrNotFound)
		}
		return Info{}, fmt.Errorf("loopdev: %s: %w", dev.Path, ErrNotAttached)
	}
	if err != nil {
		return Info{}, err
	}
	info := Info{Device: dev}
	info.BackingFile, info.BackingDeleted = strings.CutSuffix(backing, deletedSuffix)
	var errs []error
	flag := func(name string) bool {
		v, err := readSysfs(base, name)
		errs = append(errs, err)
		return v == "1"
	}
	num := func(name string) uint64 {
		v, err := readSysfs(base, name)
		var u uint64
		if err == nil {
			u, err = strconv.ParseUint(v, 10, 64)
		}
		errs = append(errs, err)
		return u
	}
	info.DirectIO = flag("loop/dio")
	info.AutoClear = flag("loop/autoclear")
	info.ReadOnly = flag("ro")
	info.SizeBytes = int64(num("size")) * sectorSize // sysfs size is in 512-byte sectors
	info.BlockSize = uint32(num("queue/logical_block_size"))
	info.Offset = num("loop/offset")
	info.SizeLimit = num("loop/sizelimit")
	if err := errors.Join(errs...); err != nil {
		// Most likely the device was detached between the reads.
		return Info{}, fmt.Errorf("loopdev: %s: read sysfs: %w", dev.Path, err)
	}
	return info, nil
}

func readSysfs(base, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(base, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// Find returns the lowest-numbered loop device attached to backingFile, so
// callers can make Attach idempotent. Paths are compared after making them
// absolute, cleaning them and resolving symlinks, because the kernel reports
// the resolved path. When the file exists, a match must also have the same
// inode: a device still bound to an older, since unlinked file of the same
// name does not count. When the file does not exist, devices whose backing
// file was deleted at that path are returned, so that they can be cleaned up.
func Find(backingFile string) (Device, bool, error) {
	want, ino, exists, err := identify(backingFile)
	if err != nil {
		return Device{}, false, err
	}
	infos, err := List()
	if err != nil {
		return Device{}, false, err
	}
	for _, info := range infos {
		if info.BackingFile != want || info.BackingDeleted == exists {
			continue
		}
		if !exists {
			return info.Device, true, nil
		}
		same, err := backedByInode(info.Device, ino)
		if err != nil {
			return Device{}, false, err
		}
		if same {
			return info.Device, true, nil
		}
	}
	return Device{}, false, nil
}

// identify resolves backingFile to the form the kernel reports and, if the
// file exists, its inode number.
func identify(backingFile string) (path string, ino uint64, exists bool, err error) {
	abs, err := filepath.Abs(backingFile)
	if err != nil {
		return "", 0, false, fmt.Errorf("loopdev: %s: %w", backingFile, err)
	}
	var st unix.Stat_t
	err = unix.Stat(abs, &st)
	if errors.Is(err, unix.ENOENT) {
		return abs, 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("loopdev: stat %s: %w", abs, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", 0, false, fmt.Errorf("loopdev: resolve %s: %w", abs, err)
	}
	return real, st.Ino, true, nil
}

// backedByInode compares only the inode number: lo_device holds the
// superblock's device number, which differs from stat's st_dev on btrfs
// subvolumes, and the paths already matched.
func backedByInode(dev Device, ino uint64) (bool, error) {
	f, err := os.OpenFile(dev.Path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // device removed meanwhile
		}
		return false, fmt.Errorf("loopdev: open %s: %w", dev.Path, err)
	}
	defer f.Close()
	st, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return false, nil // detached meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("loopdev: LOOP_GET_STATUS64 %s: %w", dev.Path, err)
	}
	return st.Inode == ino, nil
}

// deviceFromPath checks that path is a whole loop block device and returns
// its number. The number comes from the sysfs name of its dev_t, because
// minor numbers are shifted when the loop module has max_part set.
func deviceFromPath(path string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Device{}, fmt.Errorf("loopdev: %s: %w", path, ErrNotFound)
		}
		return Device{}, fmt.Errorf("loopdev: stat %s: %w", path, err)
	}
	maj, min := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || maj != loopMajor {
		return Device{}, fmt.Errorf("loopdev: %s: %w", path, ErrNotLoopDevice)
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", maj, min))
	if err != nil {
		return Device{}, fmt.Errorf("loopdev: %s: sysfs entry: %w", path, ErrNotFound)
	}
	n, ok := parseLoopName(filepath.Base(link))
	if !ok {
		return Device{}, fmt.Errorf("loopdev: %s (%s): %w", path, filepath.Base(link), ErrNotLoopDevice)
	}
	return deviceForNumber(n), nil
}
