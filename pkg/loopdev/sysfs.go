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
	"time"

	"golang.org/x/sys/unix"
)

// List returns every attached loop device, ordered by number. It reads sysfs
// only, so it neither opens device nodes nor races with attach/detach into
// errors: a device that detaches (or is removed) while being read is left
// out.
func List() ([]Info, error) {
	return kernelSysfs().list(func(string) bool { return true })
}

// ListUnder returns the attached loop devices whose backing file lies below
// dir, ordered by number. Of every other device it reads only the backing
// file's name, so it looks at nothing that is not ours and cannot fail
// because of a device another process detaches meanwhile.
func ListUnder(dir string) ([]Info, error) {
	prefix := filepath.Clean(dir) + "/"
	return kernelSysfs().list(func(backing string) bool { return strings.HasPrefix(backing, prefix) })
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

func statusByNumber(n int) (Info, error) { return kernelSysfs().status(n) }

// sysfs reads loop device state below a /sys/block directory. read is the
// file reader; tests substitute both to replay the kernel's races.
type sysfs struct {
	root string
	read func(path string) ([]byte, error)
}

func kernelSysfs() sysfs { return sysfs{root: sysBlockDir, read: os.ReadFile} }

// statusAttempts bounds the re-reads of a device that is being attached or
// detached while it is read (the kernel adds and removes the loop/
// attributes one by one).
const statusAttempts = 5

// list returns the attached devices whose backing file (as the kernel
// reports it, " (deleted)" removed) satisfies match.
func (s sysfs) list(match func(backing string) bool) ([]Info, error) {
	entries, err := os.ReadDir(s.root)
	if err != nil {
		return nil, fmt.Errorf("loopdev: list %s: %w", s.root, err)
	}
	var infos []Info
	for _, e := range entries {
		n, ok := parseLoopName(e.Name())
		if !ok {
			continue
		}
		backing, err := s.attr(n, "loop/backing_file")
		if err != nil {
			continue // not attached, or detached since ReadDir: not a device to report
		}
		if b, _ := strings.CutSuffix(backing, deletedSuffix); !match(b) {
			continue
		}
		info, err := s.status(n)
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

// status reads /sys/block/loopN. The loop/ subdirectory exists only while a
// backing file is bound, which is how "not attached" is detected. A device
// that is being detached or bound again while it is read (an attribute
// vanishes, or the backing file changes between the first and the last
// read) is read again; one that never holds still is reported as not
// attached: it has no attachment that could be described.
func (s sysfs) status(n int) (Info, error) {
	var err error
	for attempt := range statusAttempts {
		var info Info
		info, err = s.readStatus(n)
		if !errors.Is(err, errChanged) {
			return info, err
		}
		if gone := s.attached(n); gone != nil {
			return Info{}, gone
		}
		time.Sleep(time.Duration(attempt+1) * time.Millisecond)
	}
	return Info{}, fmt.Errorf("%w: %w", ErrNotAttached, err)
}

// errChanged: the device was detached or bound again while it was read.
var errChanged = errors.New("loop device changed while it was read")

// vanished tells the errors of reading an attribute the kernel is removing.
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO)
}

func (s sysfs) readStatus(n int) (Info, error) {
	dev := deviceForNumber(n)
	backing, err := s.attr(n, "loop/backing_file")
	if vanished(err) {
		if gone := s.attached(n); gone != nil {
			return Info{}, gone
		}
		err = fmt.Errorf("%w: %w", errChanged, err)
	}
	if err != nil {
		return Info{}, fmt.Errorf("loopdev: %s: read sysfs: %w", dev.Path, err)
	}
	info := Info{Device: dev}
	info.BackingFile, info.BackingDeleted = strings.CutSuffix(backing, deletedSuffix)
	var errs []error
	flag := func(name string) bool {
		v, err := s.attr(n, name)
		errs = append(errs, err)
		return v == "1"
	}
	num := func(name string) uint64 {
		v, err := s.attr(n, name)
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
	if again, err := s.attr(n, "loop/backing_file"); err != nil || again != backing {
		errs = append(errs, fmt.Errorf("%w: backing file %q, now %q (%v)", errChanged, backing, again, err))
	}
	err = errors.Join(errs...)
	if err != nil && slices.ContainsFunc(errs, func(e error) bool { return e != nil && vanished(e) }) {
		err = fmt.Errorf("%w: %w", errChanged, err)
	}
	if err != nil {
		return Info{}, fmt.Errorf("loopdev: %s: read sysfs: %w", dev.Path, err)
	}
	return info, nil
}

// attached returns ErrNotFound when loopN does not exist, ErrNotAttached
// when it has no backing file, and nil when it is attached.
func (s sysfs) attached(n int) error {
	dev := deviceForNumber(n)
	base := filepath.Join(s.root, "loop"+strconv.Itoa(n))
	if _, err := s.read(filepath.Join(base, "loop", "backing_file")); !vanished(err) {
		return nil
	}
	if _, err := os.Stat(base); err != nil {
		return fmt.Errorf("loopdev: %s: %w", dev.Path, ErrNotFound)
	}
	return fmt.Errorf("loopdev: %s: %w", dev.Path, ErrNotAttached)
}

func (s sysfs) attr(n int, name string) (string, error) {
	b, err := s.read(filepath.Join(s.root, "loop"+strconv.Itoa(n), name))
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
