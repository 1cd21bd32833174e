package attach

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW from include/uapi/linux/fs.h (_IOWR('X', 119/120, int));
// x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// mountEntry is one line of /proc/self/mountinfo, reduced to what we use.
type mountEntry struct {
	major, minor uint32
	mountPoint   string
	fsType       string
}

// readMounts parses /proc/self/mountinfo.
func readMounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if e, ok := parseMountLine(sc.Text()); ok {
			out = append(out, e)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("attach: read mountinfo: %w", err)
	}
	return out, nil
}

// parseMountLine: "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw".
func parseMountLine(line string) (mountEntry, bool) {
	fields := strings.Fields(line)
	if len(fields) < 10 {
		return mountEntry{}, false
	}
	maj, min, ok := strings.Cut(fields[2], ":")
	if !ok {
		return mountEntry{}, false
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return mountEntry{}, false
	}
	e := mountEntry{major: uint32(ma), minor: uint32(mi), mountPoint: unescapeMount(fields[4])}
	for i := 6; i < len(fields)-1; i++ {
		if fields[i] == "-" {
			e.fsType = fields[i+1]
			break
		}
	}
	return e, true
}

// unescapeMount undoes the octal escapes (\040 etc.) of mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// deviceMounts returns the mount points of the block device at path.
func deviceMounts(path string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("attach: stat %s: %w", path, err)
	}
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.major == unix.Major(st.Rdev) && m.minor == unix.Minor(st.Rdev) {
			out = append(out, m.mountPoint)
		}
	}
	return out, nil
}

// isMountPoint reports whether path is a mount point in mountinfo.
func isMountPoint(path string) (bool, error) {
	mounts, err := readMounts()
	if err != nil {
		return false, err
	}
	for _, m := range mounts {
		if m.mountPoint == path {
			return true, nil
		}
	}
	return false, nil
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
