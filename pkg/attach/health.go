package attach

import (
	"fmt"

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
)

// A volume fails when a sync of one of its deltas fails: the page cache may
// have dropped data or BAT entries written before, so pkg/image makes the
// failure sticky (every later write, flush and snapshot fails until the image
// is closed, checked and reopened). The serving process reports it: a log
// line when I/O first meets it, Status.Failure, and ErrVolumeFailed for
// snapshot and grow.

// failure returns ErrVolumeFailed once the chain has failed.
func (s *server) failure() error {
	if err := s.health(); err != nil {
		return fmt.Errorf("%w: %s: %w; detach, check and attach the image again", ErrVolumeFailed, s.dir, err)
	}
	return nil
}

// noteFailure logs the chain's failure the first time I/O meets it.
func (s *server) noteFailure() {
	if err := s.health(); err != nil {
		s.failLog.Do(func() {
			s.log.Error("volume failed: a sync of a delta failed, every write, flush and snapshot now fails until the image is detached, checked and attached again",
				"device", s.dev, "err", err)
		})
	}
}

// chainFailure returns the sticky error of a chain that reports one (a
// failed sync makes pkg/image's chain fail for good); nil for a healthy
// chain or one that cannot tell.
func chainFailure(chain any) error {
	if c, ok := chain.(interface{ Err() error }); ok {
		return c.Err()
	}
	return nil
}

// watchedDisk is the chain as the FUSE server sees it; an I/O error makes
// the server look whether the volume failed, so that it is logged when it
// happens rather than when someone asks.
type watchedDisk struct {
	blockmap.Disk
	onError func()
}

var _ blockmap.Disk = watchedDisk{}

func (d watchedDisk) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Disk.WriteAt(p, off)
	if err != nil {
		d.onError()
	}
	return n, err
}

func (d watchedDisk) Flush() error {
	err := d.Disk.Flush()
	if err != nil {
		d.onError()
	}
	return err
}

func (d watchedDisk) Discard(off, length int64) error {
	err := d.Disk.Discard(off, length)
	if err != nil {
		d.onError()
	}
	return err
}
