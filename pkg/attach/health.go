package attach

import (
	"fmt"
	"time"
)

// A volume fails when a sync of one of its deltas fails: the page cache may
// have dropped data or BAT entries written before, so pkg/image makes the
// failure sticky (every later write, flush and snapshot fails until the image
// is closed, checked and reopened). The serving process reports it: a log
// line (the run loop looks every healthEvery, and every failed control
// request looks at once), Status.Failure, and ErrVolumeFailed for snapshot
// and grow. The data path is not wrapped for this: the FUSE server keeps
// talking to the chain itself.

// healthEvery is how often the run loop looks whether the volume failed.
const healthEvery = 2 * time.Second

// failure returns ErrVolumeFailed once the chain has failed.
func (s *server) failure() error {
	if err := s.health(); err != nil {
		return fmt.Errorf("%w: %s: %w; detach, check and attach the image again", ErrVolumeFailed, s.dir, err)
	}
	return nil
}

// noteFailure logs the chain's failure the first time it is seen.
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
