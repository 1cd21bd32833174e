package attach

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// The server's side of the merge operation: two adjacent deltas of the
// served chain become one while I/O goes on (image.Image.Merge: a
// background copy, then a short switch under the chain's write lock that
// rewrites the descriptor). A merge takes long, so unlike the other
// operations it does not hold s.mu while it copies: status answers
// meanwhile (with the merge's progress), and a hand-over or detach cancels
// it instead of waiting for it. The copy phase changes no chain's content,
// so a cancelled merge leaves nothing to undo; the caller runs it again.

// merges is the merge state of a server: one merge at a time.
type merges struct {
	mu  sync.Mutex
	job *mergeJob
	// refused is why no merge may start (a hand-over is draining the
	// server, or it is being torn down); nil otherwise.
	refused error
}

// mergeJob is the running merge.
type mergeJob struct {
	req         MergeRequest
	began       time.Time
	done, total atomic.Int64
	// ctx is cancelled, with the reason as its cause, to stop the copy.
	ctx      context.Context
	cancel   context.CancelCauseFunc
	finished chan struct{}
}

// Why a merge was cancelled (the cause of its context).
var (
	errClientGone = errors.New("the client went away")
	errDraining   = errors.New("the server is handed over to a successor")
	errDetaching  = errors.New("the image is being detached")
)

// mergeOp answers a merge request on conn. The request has been read.
func (s *server) mergeOp(conn net.Conn, req request) {
	defer conn.Close()
	job, err := s.startMerge(req)
	if err != nil {
		writeResponse(conn, errResponse(err), nil)
		return
	}
	stopWatch := watchHangup(conn, job.cancel)
	res, err := s.runMerge(job)
	stopWatch()
	if err != nil {
		writeResponse(conn, errResponse(err), nil)
		return
	}
	writeResponse(conn, response{OK: true, Merge: &res}, nil)
}

// startMerge validates the request against the served chain and registers
// the merge, or says why it cannot run now.
func (s *server) startMerge(req request) (*mergeJob, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failure(); err != nil {
		return nil, err
	}
	if err := s.live(); err != nil {
		return nil, err
	}
	if s.handedOver {
		return nil, fmt.Errorf("%w: %s was handed over", ErrNotAttached, s.dir)
	}
	mr, err := s.validMerge(req)
	if err != nil {
		return nil, err
	}
	return s.merges.begin(s.dir, mr)
}

// begin registers a merge of mr, or says why it cannot run now.
func (m *merges) begin(dir string, mr MergeRequest) (*mergeJob, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refused != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotAttached, dir, m.refused)
	}
	if j := m.job; j != nil {
		return nil, j.busy(dir)
	}
	job := &mergeJob{req: mr, began: time.Now(), finished: make(chan struct{})}
	job.ctx, job.cancel = context.WithCancelCause(context.Background())
	m.job = job
	return job, nil
}

// end unregisters job once it has ended.
func (m *merges) end(job *mergeJob) {
	job.cancel(nil)
	m.mu.Lock()
	if m.job == job {
		m.job = nil
	}
	m.mu.Unlock()
	close(job.finished)
}

// validMerge accepts only two adjacent deltas of the chain this server
// serves, named by the absolute, clean paths the chain knows them by:
// nothing in a request can name a file outside the image's chain.
func (s *server) validMerge(req request) (MergeRequest, error) {
	mr := MergeRequest{Parent: req.Parent, Child: req.Child, Direction: image.MergeDirection(req.Direction)}
	switch mr.Direction {
	case image.MergeAuto, image.MergeDown, image.MergeUp:
	default:
		return mr, fmt.Errorf("%w: merge direction %q (want \"\", %q or %q)", ErrInvalid, req.Direction, image.MergeDown, image.MergeUp)
	}
	for _, p := range []string{mr.Parent, mr.Child} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return mr, fmt.Errorf("%w: merge: %q is not an absolute, clean path", ErrInvalid, p)
		}
	}
	deltas := s.img.Chain().Deltas()
	for i := 0; i+1 < len(deltas); i++ {
		if filepath.Clean(deltas[i]) == mr.Parent && filepath.Clean(deltas[i+1]) == mr.Child {
			return mr, nil
		}
	}
	return mr, fmt.Errorf("%w: merge: %s and %s are not adjacent deltas (parent, child) of the chain of %s",
		ErrInvalid, mr.Parent, mr.Child, s.dir)
}

// runMerge runs job to its end and unregisters it.
func (s *server) runMerge(job *mergeJob) (MergeResult, error) {
	ctx := job.ctx
	defer s.merges.end(job)
	if ctx.Err() != nil { // a drain or detach that began since startMerge
		return MergeResult{}, s.mergeFailed(ctx, job, ctx.Err())
	}
	s.log.Info("merge", "parent", job.req.Parent, "child", job.req.Child, "direction", job.req.Direction)
	st, err := s.img.Merge(ctx, job.req.Parent, job.req.Child, image.PairMergeOptions{
		Direction: job.req.Direction,
		Progress:  func(done, total int64) { job.done.Store(done); job.total.Store(total) },
	})
	if err != nil {
		return MergeResult{}, s.mergeFailed(ctx, job, err)
	}
	res := resultOf(st)
	s.log.Info("merged", "kept", res.Kept, "dropped", res.Dropped, "direction", res.Direction,
		"bytesCopied", res.BytesCopied, "duration", res.Duration, "pause", res.Pause, "depth", s.img.Chain().Depth())
	return res, nil
}

// mergeFailed says why a merge ended without its switch.
func (s *server) mergeFailed(ctx context.Context, job *mergeJob, err error) error {
	if ctx.Err() != nil {
		cause := context.Cause(ctx)
		s.log.Info("merge cancelled; nothing changed", "child", job.req.Child, "why", cause)
		if errors.Is(cause, errClientGone) {
			return fmt.Errorf("attach: merge of %s cancelled: %w", s.dir, cause)
		}
		// The caller retries: offline after a detach, with the successor
		// after a hand-over.
		return fmt.Errorf("%w: merge of %s cancelled: %w", ErrNotAttached, s.dir, cause)
	}
	s.noteFailure()
	if f := s.failure(); f != nil && !errors.Is(err, ErrVolumeFailed) {
		err = fmt.Errorf("%w (%w)", f, err)
	}
	s.log.Error("merge failed", "parent", job.req.Parent, "child", job.req.Child, "err", err)
	if errors.Is(err, errors.ErrUnsupported) {
		// A direction the engine cannot take online (down into the writable
		// top): a bad request, not a server too old to merge, which is what
		// errors.ErrUnsupported means to a client of this op.
		return fmt.Errorf("%w: merge %s: %w (direction auto takes one that works)", ErrInvalid, s.dir, err)
	}
	return fmt.Errorf("attach: merge %s: %w", s.dir, typed(err))
}

// watchHangup cancels the merge when the client closes its connection (its
// context ended): nobody waits for the result any longer. The request was
// one JSON value; anything the client sends after it is ignored.
func watchHangup(conn net.Conn, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			if _, err := conn.Read(buf); err != nil {
				if !isTimeout(err) { // not our own deadline: the client closed
					cancel(errClientGone)
				}
				return
			}
		}
	}()
	return func() {
		conn.SetReadDeadline(time.Unix(1, 0)) // ends the Read above
		<-done
		conn.SetReadDeadline(time.Time{})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// stopMerges refuses new merges for why and cancels the running one,
// waiting up to wait for it to end. It reports false if the merge is still
// running then (it is stuck in I/O: the caller does not go on as if it
// had ended).
func (s *server) stopMerges(why error, wait time.Duration) bool {
	s.merges.mu.Lock()
	s.merges.refused = why
	job := s.merges.job
	s.merges.mu.Unlock()
	if job == nil {
		return true
	}
	job.cancel(why)
	select {
	case <-job.finished:
		return true
	case <-time.After(wait):
		return false
	}
}

// allowMerges lets merges run again after a hand-over that was refused.
func (s *server) allowMerges() {
	s.merges.mu.Lock()
	s.merges.refused = nil
	s.merges.mu.Unlock()
}

// mergeBusy refuses an operation that rewrites the descriptor (snapshot,
// grow) while a merge runs: the merge's switch rewrites it too.
func (s *server) mergeBusy() error {
	s.merges.mu.Lock()
	defer s.merges.mu.Unlock()
	if j := s.merges.job; j != nil {
		return j.busy(s.dir)
	}
	return nil
}

// busy is the error of an operation refused while j runs.
func (j *mergeJob) busy(dir string) error {
	return fmt.Errorf("%w: %s: merging %s into %s since %s", ErrMerging, dir,
		filepath.Base(j.req.Child), filepath.Base(j.req.Parent), j.began.Format(time.RFC3339))
}

// mergeStatus is the running merge for Status, nil if none.
func (s *server) mergeStatus() *MergeStatus {
	s.merges.mu.Lock()
	defer s.merges.mu.Unlock()
	j := s.merges.job
	if j == nil {
		return nil
	}
	return &MergeStatus{Parent: j.req.Parent, Child: j.req.Child, Direction: j.req.Direction,
		Done: j.done.Load(), Total: j.total.Load(), Started: j.began}
}
