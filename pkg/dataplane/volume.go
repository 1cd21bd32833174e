package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// volume is one kept volume. Everything that changes it runs on its own
// goroutine (loop): requests (attach, hand-over, cleanup) as functions sent
// to it, and the messages of the current server, so that a crash and a
// request never act on the volume at the same time.
type volume struct {
	s       *Supervisor
	dir, rt string
	log     *slog.Logger
	cmds    chan func()
	done    chan struct{} // closed when the loop has ended

	// Owned by the loop goroutine.
	cur    *server
	files  attach.KeepFiles // our duplicates; Dev nil until a server was ready
	state  attach.KeepState
	fails  int // quick failures in a row
	ended  bool
	status VolumeStatus

	mu    sync.Mutex // guards shown
	shown *VolumeStatus
}

func newVolume(s *Supervisor, dir string) *volume {
	v := &volume{s: s, dir: dir, rt: attach.RuntimeDir(s.opts.RunDir, dir),
		log: s.log.With("dir", dir), cmds: make(chan func()), done: make(chan struct{})}
	go v.loop()
	return v
}

// loop runs the volume's requests and watches its server until the volume
// is no longer kept.
func (v *volume) loop() {
	defer func() {
		close(v.done)
		v.s.forget(v)
	}()
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for !v.ended {
		var events chan event
		if v.cur != nil {
			events = v.cur.events
		}
		select {
		case fn := <-v.cmds:
			fn()
		case ev, ok := <-events:
			if !ok {
				ev.err = errServerGone
			}
			v.onEvent(ev)
		case <-v.s.stopping:
			return
		}
		// An entry made by a request that found nothing to keep ends.
		if v.cur == nil && v.files.Dev == nil {
			v.ended = true
		}
		v.publish()
	}
}

// do runs fn on the loop goroutine and returns its error.
func (v *volume) do(ctx context.Context, fn func() error) error {
	errc := make(chan error, 1)
	select {
	case v.cmds <- func() { errc <- fn() }:
	case <-v.done:
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-errc
}

// release lets go of the volume when the supervisor stops: the server
// keeps running without a keeper (the next supervisor adopts it).
func (v *volume) release() {
	<-v.done
	v.files.Close()
	if v.cur != nil {
		v.cur.ch.Close()
	}
}

// publish copies the loop's view for status requests.
func (v *volume) publish() {
	st := VolumeStatus{Dir: v.dir, Device: v.state.Device, State: v.status.State,
		Restarts: v.status.Restarts, CanResend: v.state.CanResend} // as the server saw it
	if v.cur != nil {
		st.PID, st.Binary = v.cur.pid, v.cur.binary
	}
	v.mu.Lock()
	if v.ended {
		v.shown = nil
	} else {
		v.shown = &st
	}
	v.mu.Unlock()
}

// snapshot is the volume's status, ok false once it is not kept.
func (v *volume) snapshot() (VolumeStatus, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.shown == nil {
		return VolumeStatus{}, false
	}
	return *v.shown, true
}

func (v *volume) setState(s string) { v.status.State = s; v.publish() }

// attach starts the volume's first serving process, which mounts FUSE,
// answers INIT, attaches the loop device and reports its descriptors.
func (v *volume) attach(ctx context.Context) (string, error) {
	if v.cur != nil {
		return v.state.Device, nil
	}
	if v.files.Dev != nil {
		return "", fmt.Errorf("%w: %s is being restarted", attach.ErrLocked, v.dir)
	}
	// Someone else's server (an operator's, a driver without a data
	// plane) answers: that is the device.
	if dev, ok, err := v.s.attach.Attached(ctx, v.dir); err != nil || ok {
		return dev, err
	}
	if err := v.s.attach.Cleanup(ctx, v.dir); err != nil && !errors.Is(err, attach.ErrBusy) {
		return "", err // ErrBusy: an old loop device stays until its fs is unmounted
	}
	if err := os.MkdirAll(v.rt, 0o700); err != nil {
		return "", fmt.Errorf("dataplane: runtime dir: %w", err)
	}
	v.setState("starting")
	srv, err := v.s.spawn(v.dir, v.rt, attach.KeepMsg{Op: attach.KeepStart, Mode: attach.ModeFresh}, attach.KeepFiles{})
	if err != nil {
		return "", err
	}
	ev, err := v.awaitCtx(ctx, srv, attach.KeepReady)
	if err != nil {
		return "", v.undoStart(srv, err)
	}
	v.serving(srv, ev)
	v.fails = 0
	if !v.canResend() {
		v.log.Warn("the kernel cannot re-send a dead server's requests (FUSE_NOTIFY_RESEND, Linux 6.9): a crash of this volume's serving process fails its I/O (EIO) and the driver attaches it again; hand-overs work")
	}
	v.log.Info("attached", "device", v.state.Device, "pid", srv.pid)
	return v.state.Device, nil
}

// awaitCtx is await for a start: bounded by StartTimeout and ctx; a bye
// (the start failed) is an error with the server's reason.
func (v *volume) awaitCtx(ctx context.Context, srv *server, op string) (event, error) {
	timeout := v.s.opts.StartTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	ev, err := v.await(srv, timeout, op, attach.KeepBye)
	if err == nil && ev.msg.Op == attach.KeepBye {
		unixsock.CloseFiles(ev.files)
		return ev, fmt.Errorf("%w: %s: %s", attach.ErrStartFailed, ev.msg.Reason, ev.msg.Error)
	}
	return ev, err
}

// undoStart stops a server whose first start failed and removes what it
// left; the error carries the end of its log.
func (v *volume) undoStart(srv *server, cause error) error {
	srv.kill()
	err := fmt.Errorf("%w; log: %s", cause, attach.LogTail(v.rt))
	ctx, cancel := context.WithTimeout(context.Background(), stopWait)
	defer cancel()
	if cerr := v.s.attach.Cleanup(ctx, v.dir); cerr != nil {
		err = errors.Join(err, fmt.Errorf("dataplane: clean up after the failed start: %w", cerr))
	}
	v.setState("")
	return err
}

// serving makes srv, which reported ready, the volume's server; the
// descriptors that came with ready replace ours (the same connection).
func (v *volume) serving(srv *server, ev event) {
	files := attach.KeepFilesOf(ev.files)
	if files.Dev != nil && files.Root != nil && files.Ctl != nil {
		v.files.Close()
		v.files = files
	} else {
		files.Close()
	}
	if ev.msg.State != nil {
		v.state = *ev.msg.State
	}
	srv.since = time.Now()
	if ev.msg.State != nil && ev.msg.State.Binary != "" {
		srv.binary = ev.msg.State.Binary
	}
	v.cur = srv
	v.setState("serving")
}

// onEvent handles a message of the current server, or its end.
func (v *volume) onEvent(ev event) {
	srv := v.cur
	if ev.err != nil {
		v.crashed(srv)
		return
	}
	switch ev.msg.Op {
	case attach.KeepBye:
		unixsock.CloseFiles(ev.files)
		v.log.Info("serving process left", "pid", srv.pid, "reason", ev.msg.Reason, "err", ev.msg.Error)
		v.letGo()
	default:
		v.unexpected(srv, ev)
	}
}

// letGo forgets the volume: nothing of it is to be kept any more.
func (v *volume) letGo() {
	if v.cur != nil {
		v.cur.ch.Close()
		v.cur = nil
	}
	v.files.Close()
	v.files = attach.KeepFiles{}
	v.ended = true
}

func (v *volume) unexpected(srv *server, ev event) {
	unixsock.CloseFiles(ev.files)
	v.log.Warn("unexpected message from a serving process", "pid", srv.pid, "op", ev.msg.Op)
}

// cleanup removes what a dead server left, unless we keep the volume (a
// server is up, or being restarted: the leftovers are its connection).
func (v *volume) cleanup(ctx context.Context) error {
	if v.cur != nil && !v.answers(ctx) {
		v.awaitLeaving(v.cur)
	}
	if v.cur != nil || v.files.Dev != nil {
		return fmt.Errorf("%w: %s is kept by the data plane", attach.ErrAlreadyAttached, v.dir)
	}
	return v.s.attach.Cleanup(ctx, v.dir)
}

// leaveWait bounds how long a cleanup waits for the bye of a server that
// no longer answers: one that detached says bye right after its answer to
// the driver, whose cleanup (DeleteVolume after NodeUnstage) can reach us
// before the bye does.
const leaveWait = 2 * time.Second

// answers reports whether the current server answers a status question
// soon. We hold a duplicate of its control socket, so a server that has
// detached or died leaves connections unanswered rather than refused.
func (v *volume) answers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, alive, err := v.s.attach.Attached(ctx, v.dir)
	return alive || (err != nil && !unixsock.CtxEnded(ctx, err))
}

// awaitLeaving waits up to leaveWait for srv's bye (or its end) and acts
// on it as the loop would: a detached server is let go, a dead one
// restarted (the volume stays kept).
func (v *volume) awaitLeaving(srv *server) {
	ev, err := v.await(srv, leaveWait, attach.KeepBye)
	switch {
	case err == nil: // the bye
		v.onEvent(ev)
	case errors.Is(err, errServerGone): // the channel ended, with or without an error event
		v.onEvent(event{err: err})
	}
}

// ctlSocket is the path of the volume's control socket.
func (v *volume) ctlSocket() string { return filepath.Join(v.rt, "ctl.sock") }
