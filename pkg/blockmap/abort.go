package blockmap

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// fusectlDir is where the fusectl file system lists FUSE connections.
const fusectlDir = "/sys/fs/fuse/connections"

// Abort kills the FUSE connection through fusectl, mounting fusectl on
// /sys/fs/fuse/connections first if needed (it is left mounted: it is the
// standard place and others may use it). Every pending and future request
// fails: the file answers ENOTCONN, a loop device above it EIO. This is the
// way out of a hung Disk; the mount itself stays until Close.
//
// Abort does not touch the FUSE mount (no stat, no open), so it works while
// the server is stuck.
func (s *Server) Abort() error {
	path := filepath.Join(fusectlDir, strconv.FormatUint(s.connID, 10), "abort")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := mountFusectl(); err != nil {
			return err
		}
	}
	if err := os.WriteFile(path, []byte("1"), 0); err != nil {
		return fmt.Errorf("blockmap: abort connection: %w", err)
	}
	return nil
}

func mountFusectl() error {
	err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, "")
	if err != nil && !errors.Is(err, unix.EBUSY) { // EBUSY: already mounted
		return fmt.Errorf("blockmap: mount fusectl on %s: %w", fusectlDir, err)
	}
	return nil
}

// onOverdue is the watchdog's action: a Disk call has exceeded
// RequestTimeout, so fail everything rather than hang for ever.
func (s *Server) onOverdue() {
	s.log.Error("disk request exceeded the timeout, aborting the FUSE connection",
		"timeout", s.opts.RequestTimeout)
	if err := s.Abort(); err != nil {
		s.log.Error("abort failed", "err", err)
	}
}
