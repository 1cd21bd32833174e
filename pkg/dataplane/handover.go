package dataplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// drainTimeout bounds the old server's drain of a hand-over: answering the
// requests it holds, flushing and closing the image.
const drainTimeout = 2 * time.Minute

// handover replaces the current server by a new one of our binary without
// an I/O error:
//  1. a successor starts in standby with our descriptors of the volume
//     (nothing opened yet);
//  2. the old server drains: it stops reading FUSE requests, answers those
//     it holds, flushes and closes the image (releasing its lock), answers
//     released and exits; requests arriving meanwhile wait in the kernel;
//  3. the successor opens the image and serves the same connection, on the
//     same loop device and control listener, after asking the kernel to
//     re-send whatever a server that died in step 2 had taken.
//
// If the old server refuses (its flush failed), the successor is stopped
// and the old one serves on. If the successor fails, the old one is gone:
// the volume is restarted as after a crash.
func (v *volume) handover(ctx context.Context) error {
	old := v.cur
	if old == nil {
		return fmt.Errorf("%w: %s", attach.ErrNotAttached, v.dir)
	}
	v.setState("handing-over")
	defer func() {
		if v.cur != nil {
			v.setState("serving")
		}
	}()
	start := attach.KeepMsg{Op: attach.KeepStart, Mode: attach.ModeAdopt, Standby: true, State: &v.state}
	succ, err := v.s.spawn(v.dir, v.rt, start, v.files)
	if err != nil {
		return err
	}
	if _, err := v.awaitCtx(ctx, succ, attach.KeepStandby); err != nil {
		succ.kill()
		return fmt.Errorf("dataplane: hand-over of %s: successor: %w; log: %s", v.dir, err, attach.LogTail(v.rt))
	}
	began := time.Now()
	if err := old.ch.Send(attach.KeepMsg{Op: attach.KeepDrain}); err != nil {
		v.log.Warn("hand-over: the old server's channel failed; taking over as after a crash", "err", err)
	}
	ev, err := v.await(old, drainTimeout, attach.KeepReleased, attach.KeepDrainFailed, attach.KeepBye)
	switch {
	case err == nil && ev.msg.Op == attach.KeepBye:
		// Detached (the driver's detach won the race with the drain) or
		// aborted: there is nothing left to hand over.
		unixsock.CloseFiles(ev.files)
		stopStandby(succ)
		v.log.Info("the serving process left during the hand-over", "reason", ev.msg.Reason, "err", ev.msg.Error)
		v.letGo()
		return fmt.Errorf("%w: %s left during the hand-over (%s)", attach.ErrNotAttached, v.dir, ev.msg.Reason)
	case errors.Is(err, errServerGone):
		v.log.Warn("hand-over: the old server died while draining; its successor recovers its requests", "pid", old.pid)
		old.awaitGone()
	case err != nil:
		// Stuck in its drain: only a child of ours can be stopped.
		if old.cmd == nil {
			stopStandby(succ)
			return fmt.Errorf("dataplane: hand-over of %s: %w", v.dir, err)
		}
		v.log.Error("hand-over: the old server did not drain; killing it, its successor recovers its requests", "pid", old.pid, "err", err)
		old.cmd.Process.Kill()
		old.awaitGone()
	case ev.msg.Op == attach.KeepDrainFailed:
		unixsock.CloseFiles(ev.files)
		stopStandby(succ)
		return fmt.Errorf("dataplane: hand-over of %s refused by the serving process: %s", v.dir, ev.msg.Error)
	default:
		unixsock.CloseFiles(ev.files)
	}
	old.ch.Close()
	v.cur = nil
	if err := succ.ch.Send(attach.KeepMsg{Op: attach.KeepGo, Resend: true}); err == nil {
		ev, err = v.await(succ, v.s.opts.StartTimeout, attach.KeepReady, attach.KeepBye)
		if err == nil && ev.msg.Op == attach.KeepReady {
			v.serving(succ, ev)
			v.fails = 0
			v.log.Info("handed over", "from", old.pid, "to", succ.pid, "took", time.Since(began))
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%s: %s", ev.msg.Reason, ev.msg.Error)
		}
	}
	succ.kill()
	v.log.Error("hand-over: the successor failed; restarting as after a crash", "err", err, "log", attach.LogTail(v.rt))
	v.restart()
	if v.cur == nil {
		return fmt.Errorf("dataplane: hand-over of %s failed and the volume could not be restarted: %w", v.dir, err)
	}
	return nil
}

// stopStandby tells a standby successor that it is not needed.
func stopStandby(succ *server) {
	succ.ch.Send(attach.KeepMsg{Op: attach.KeepStop})
	succ.kill()
}

// takeOver makes us the keeper of a server we did not start: "keep" when
// it has no keeper (we restarted); when it has one (a retiring supervisor,
// or force), "handover": it says goodbye to that keeper, and must then be
// handed over to a server of ours (the caller does). handedOver reports
// which happened.
func (v *volume) takeOver(ctx context.Context, force bool) (mustHandOver bool, err error) {
	if v.cur != nil {
		return false, nil
	}
	k, err := attach.Keep(ctx, v.s.opts.RunDir, v.dir, force, v.s.keeperName())
	if errors.Is(err, attach.ErrKept) && !force {
		return v.takeOver(ctx, true)
	}
	if err != nil {
		return false, err
	}
	srv := &server{ch: k.Conn, pid: k.State.PID, binary: k.State.Binary}
	srv.watch()
	v.serving(srv, event{msg: attach.KeepMsg{Op: attach.KeepReady, State: &k.State}, files: k.Files.List()})
	if force {
		v.log.Info("took the serving process over from its keeper", "pid", srv.pid)
	} else {
		v.log.Info("adopted the serving process", "pid", srv.pid, "device", v.state.Device)
	}
	return force || srv.binary != v.s.binaryID, nil
}
