package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// IsLocked reports whether a process holds the writer's lock of the image
// directory dir (an open image: a serving process, a merge, a grow). It
// never opens the image: the descriptor and the deltas are not read, and
// nothing is repaired or truncated. It probes the lock file with a shared,
// non-blocking flock that it releases at once; a directory without a lock
// file (never opened for writing, or not an image) is not locked. Any other
// failure is returned: an unreadable lock is not evidence that nobody holds
// it.
//
// The probe holds its shared lock for the duration of two system calls; a
// writer opening the image in exactly that moment gets ErrBusy and may
// retry. Callers serialize their own probes and opens.
func IsLocked(dir string) (bool, error) {
	path := filepath.Join(dir, lockFile)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe lock of %s: %w", dir, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	err = unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe lock of %s: flock: %w", dir, err)
	}
	return false, nil // closing fd drops the shared lock
}
