package dataplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// adoptRetry is how often the volumes that could not be taken over at the
// start are tried again (the supervisor is not ready until they are).
const adoptRetry = 2 * time.Second

// adoptAll keeps every serving process that runs under the run directory:
// those without a keeper (we restarted) are adopted, those of a retiring
// supervisor (a rolling update) or of another binary are handed over to
// servers of ours. Serving processes of releases before the data plane are
// left as they are: they keep serving and can be detached. The supervisor
// is ready once a scan finds nothing left to take; dead runtime
// directories are left to the driver, whose reconcile and next attach
// clean them up (they know the image directory, which the lock probe
// needs).
func (s *Supervisor) adoptAll(ctx context.Context) {
	legacy := map[string]bool{}
	for {
		left := s.adoptOnce(ctx, legacy)
		if left == 0 {
			if err := s.setReady(); err != nil {
				s.log.Error("cannot signal readiness", "err", err)
			}
			return
		}
		s.log.Info("serving processes not taken over yet; trying again", "left", left, "in", adoptRetry)
		select {
		case <-time.After(adoptRetry):
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		}
	}
}

// runtimeDirName matches the volumes' runtime directories (pkg/attach).
var runtimeDirName = regexp.MustCompile(`^[0-9a-f]{16}$`)

// adoptOnce scans the run directory once; it returns how many serving
// processes it could not take.
func (s *Supervisor) adoptOnce(ctx context.Context, legacy map[string]bool) int {
	entries, err := os.ReadDir(s.opts.RunDir)
	if err != nil {
		s.log.Error("cannot list the run directory", "dir", s.opts.RunDir, "err", err)
		return 1
	}
	left := 0
	for _, e := range entries {
		if !e.IsDir() || !runtimeDirName.MatchString(e.Name()) {
			continue
		}
		if err := s.adoptRuntimeDir(ctx, filepath.Join(s.opts.RunDir, e.Name()), legacy); err != nil {
			s.log.Error("cannot take the serving process over", "runtimeDir", e.Name(), "err", err)
			left++
		}
	}
	return left
}

func (s *Supervisor) adoptRuntimeDir(ctx context.Context, rt string, legacy map[string]bool) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := attach.StatusAt(sctx, rt)
	cancel()
	switch {
	case errors.Is(err, attach.ErrNotAttached):
		return nil // dead or detaching: the driver's business
	case err != nil:
		return err
	case st.Protocol < 2:
		if !legacy[rt] {
			legacy[rt] = true
			s.log.Info("serving process of a release before the data plane: left unsupervised (it keeps serving; detach works)",
				"dir", st.Dir, "pid", st.PID, "device", st.Device)
		}
		return nil
	}
	if v, _ := s.volume(st.Dir, false); v != nil && st.Kept && v.keeps() {
		return nil
	}
	return s.takeDir(ctx, st.Dir)
}

// takeDir becomes the keeper of dir's server and hands it over to one of
// ours when it is not ours to keep as it is.
func (s *Supervisor) takeDir(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout+drainTimeout)
	defer cancel()
	return s.onVolume(ctx, dir, true, func(v *volume) error {
		must, err := v.takeOver(ctx, false)
		if err != nil || !must {
			return err
		}
		return v.handover(ctx)
	})
}

// keeps reports whether the volume has a server (it may be briefly between
// servers; the loop owns cur, so this only reads a published status).
func (v *volume) keeps() bool {
	vs, ok := v.snapshot()
	return ok && vs.PID != 0
}

// keeperName names this supervisor in the servers' logs.
func (s *Supervisor) keeperName() string {
	return fmt.Sprintf("data plane supervisor pid %d generation %d", os.Getpid(), s.opts.Generation)
}
