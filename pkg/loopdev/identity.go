package loopdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Backs reports whether the loop device at path is attached to the file
// with device number dev (st_dev, as stat reports it) and inode ino. Unlike
// a comparison of sysfs backing-file paths it works in any mount
// namespace: a process that took a volume over from another namespace does
// not see the path the device was attached with. A device that does not
// exist or is not attached backs nothing (no error).
func Backs(path string, dev, ino uint64) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("loopdev: open %s: %w", path, err)
	}
	defer f.Close()
	st, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("loopdev: LOOP_GET_STATUS64 %s: %w", path, err)
	}
	return st.Device == dev && st.Inode == ino, nil
}
