package dataplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

var errInvalid = attach.ErrInvalid

// handle answers one request. Every operation of the supervisor is
// dispatched here.
func (s *Supervisor) handle(req request) response {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.StartTimeout+stopWait)
	defer cancel()
	var resp response
	var err error
	switch req.Op {
	case opStatus:
		st := s.status()
		resp.Status = &st
	case opAttach:
		resp.Device, err = s.attachDir(ctx, req.Dir)
	case opCleanup:
		err = s.cleanupDir(ctx, req.Dir)
	case opHandover:
		resp.PID, err = s.handoverDir(ctx, req.Dir)
	case opRetire:
		var st Status
		st, err = s.retire(req.Generation)
		resp.Status = &st
	case opStop:
		resp.PID = os.Getpid()
		s.log.Info("stop requested; serving processes keep running")
		defer s.stop() // after the answer is built; Run shuts down
	default:
		err = fmt.Errorf("%w: unknown operation %q", errInvalid, req.Op)
	}
	if err != nil {
		return errResponse(err)
	}
	resp.OK = true
	return resp
}

// attachDir starts (or finds) the serving process of dir.
func (s *Supervisor) attachDir(ctx context.Context, dir string) (string, error) {
	dir, err := absDir(dir)
	if err != nil {
		return "", err
	}
	// A retire waits for attaches in flight, so that the successor finds
	// every server we start ready and kept.
	s.mu.Lock()
	if s.retired {
		s.mu.Unlock()
		return "", fmt.Errorf("%w: attach %s: ask the supervisor that took the socket over", ErrRetired, dir)
	}
	s.attaching.Add(1)
	s.mu.Unlock()
	defer s.attaching.Done()
	var dev string
	err = s.onVolume(ctx, dir, true, func(v *volume) error {
		dev, err = v.attach(ctx)
		return err
	})
	return dev, err
}

// onVolume runs fn on the loop of dir's volume (created if create is set).
// A volume whose loop ended before fn ran (a request that found nothing to
// keep ended it) is made anew.
func (s *Supervisor) onVolume(ctx context.Context, dir string, create bool, fn func(v *volume) error) error {
	for {
		v, err := s.volume(dir, create)
		if err != nil || v == nil {
			return err
		}
		err = v.do(ctx, func() error { return fn(v) })
		if !errors.Is(err, errStopped) {
			return err
		}
		select {
		case <-s.stopping:
			return fmt.Errorf("%w: shutting down", ErrRetired)
		default:
		}
	}
}

// cleanupDir removes what a dead server of dir left, unless a server of
// ours is being restarted for it.
func (s *Supervisor) cleanupDir(ctx context.Context, dir string) error {
	dir, err := absDir(dir)
	if err != nil {
		return err
	}
	kept := false
	err = s.onVolume(ctx, dir, false, func(v *volume) error {
		kept = true
		return v.cleanup(ctx)
	})
	if kept || err != nil {
		return err
	}
	return s.attach.Cleanup(ctx, dir)
}

// handoverDir hands the volume of dir to a new serving process.
func (s *Supervisor) handoverDir(ctx context.Context, dir string) (int, error) {
	dir, err := absDir(dir)
	if err != nil {
		return 0, err
	}
	if s.isRetired() {
		return 0, fmt.Errorf("%w: hand-over of %s", ErrRetired, dir)
	}
	var pid int
	err = s.onVolume(ctx, dir, true, func(v *volume) error {
		if _, err := v.takeOver(ctx, false); err != nil {
			return err
		}
		if err := v.handover(ctx); err != nil {
			return err
		}
		pid = v.cur.pid
		return nil
	})
	return pid, err
}

// retire stops taking volumes: a supervisor of generation gen takes the
// socket over. The volumes go to it by hand-over, one by one.
func (s *Supervisor) retire(gen int64) (Status, error) {
	if gen < s.opts.Generation {
		return Status{}, fmt.Errorf("%w: generation %d asked generation %d to retire", ErrSuperseded, gen, s.opts.Generation)
	}
	s.mu.Lock()
	s.retired = true
	s.mu.Unlock()
	s.log.Info("retiring: a newer supervisor takes the socket and the volumes over", "generation", gen)
	waitGroup(&s.attaching, s.opts.StartTimeout)
	s.mu.Lock()
	empty := len(s.vols) == 0
	s.mu.Unlock()
	if empty {
		select {
		case s.emptied <- struct{}{}:
		default:
		}
	}
	return s.status(), nil
}

// waitGroup waits for wg, at most timeout.
func waitGroup(wg *sync.WaitGroup, timeout time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}
