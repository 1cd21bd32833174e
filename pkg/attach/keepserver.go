package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// The server's side of keeping (see keep.go): the keep and handover
// operations, the keep channel, and the drain of a hand-over.

// serveControl answers one control connection: an ordinary request (one
// per connection, dispatched by handle), or keep / handover, after which
// the connection is the keep channel.
func (s *server) serveControl(conn *net.UnixConn) {
	req, resp, ok := readRequest(conn)
	if ok && (req.Op == opKeep || req.Op == opHandover) {
		s.keepOp(conn, req)
		return
	}
	if ok && req.Op == opMerge {
		s.mergeOp(conn, req) // long: answered without holding mu
		return
	}
	defer conn.Close()
	after := func() {}
	if ok {
		resp, after = s.handle(req)
	}
	writeResponse(conn, resp, after)
}

// keepOp makes the requester our keeper: it gets duplicates of our
// descriptors and our state. keep is refused (ErrKept) while another keeper
// holds us; handover is not: that keeper is told goodbye (ByeHandingOver)
// and must no longer restart us.
func (s *server) keepOp(conn *net.UnixConn, req request) {
	mc := unixsock.NewMsgConn(conn)
	fail := func(err error) {
		r := errResponse(err)
		r.Version = ProtocolVersion
		mc.Send(r)
		mc.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.torn.loop || s.torn.done || s.handedOver {
		fail(fmt.Errorf("%w: %s is being detached or handed over", ErrNotAttached, s.dir))
		return
	}
	s.keepMu.Lock()
	defer s.keepMu.Unlock()
	if s.keeper != nil && req.Op == opKeep {
		fail(fmt.Errorf("%w: %s", ErrKept, s.dir))
		return
	}
	st, files, err := s.keepFiles()
	if err != nil {
		fail(err)
		return
	}
	defer files.Close()
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err = mc.Send(response{Version: ProtocolVersion, OK: true, Keep: &st}, files.List()...)
	conn.SetWriteDeadline(time.Time{})
	if err != nil {
		s.log.Warn("could not answer a keeper", "op", req.Op, "err", err)
		mc.Close()
		return
	}
	if old := s.keeper; old != nil {
		old.Send(KeepMsg{Op: KeepBye, Reason: ByeHandingOver})
		old.Close()
	}
	s.keeper, s.keptEver = mc, true
	s.log.Info("kept", "by", req.Keeper, "op", req.Op)
	go s.keeperLoop(mc)
}

// keepFiles returns our state and duplicates of our descriptors (the
// caller closes them once sent).
func (s *server) keepFiles() (KeepState, KeepFiles, error) {
	c, err := s.bm.Conn()
	if err != nil {
		return KeepState{}, KeepFiles{}, fmt.Errorf("attach: %w", err)
	}
	files := KeepFiles{Dev: c.Dev, Root: c.Root}
	if files.Ctl, err = s.ln.File(); err != nil {
		files.Close()
		return KeepState{}, KeepFiles{}, fmt.Errorf("attach: control socket: %w", err)
	}
	if files.Root == nil {
		files.Close()
		return KeepState{}, KeepFiles{}, fmt.Errorf("attach: no descriptor of the mount root")
	}
	init, err := json.Marshal(c.Init)
	if err != nil {
		files.Close()
		return KeepState{}, KeepFiles{}, fmt.Errorf("attach: %w", err)
	}
	st := KeepState{Dir: s.dir, Device: s.dev, Init: init, CanResend: c.Init != nil && c.Init.CanResend(),
		Binary: BinaryID(), PID: os.Getpid()}
	return st, files, nil
}

// readyForKeeper reports a started server to the keeper that started it.
func (s *server) readyForKeeper(k *unixsock.MsgConn) error {
	s.keepMu.Lock()
	defer s.keepMu.Unlock()
	st, files, err := s.keepFiles()
	if err != nil {
		return err
	}
	defer files.Close()
	if err := k.Send(KeepMsg{Op: KeepReady, State: &st}, files.List()...); err != nil {
		return err
	}
	s.keeper, s.keptEver = k, true
	go s.keeperLoop(k)
	return nil
}

// keeperLoop reads what the keeper k asks until it goes away.
func (s *server) keeperLoop(k *unixsock.MsgConn) {
	for {
		var m KeepMsg
		files, err := k.Recv(&m)
		unixsock.CloseFiles(files)
		if err != nil {
			s.keepMu.Lock()
			if s.keeper == k {
				s.keeper = nil
				s.log.Warn("keeper gone; serving without one until the next keeps us", "err", err)
			}
			s.keepMu.Unlock()
			k.Close()
			return
		}
		s.keepMu.Lock()
		current := s.keeper == k
		s.keepMu.Unlock()
		switch {
		case !current:
			return // replaced; the old keeper was told goodbye
		case m.Op == KeepDrain:
			if s.handOver(k) {
				return
			}
		default:
			s.log.Warn("unexpected message from the keeper", "op", m.Op)
		}
	}
}

// tellKeeper sends m if there is a keeper channel.
func tellKeeper(k *unixsock.MsgConn, m KeepMsg) {
	if k != nil {
		k.Send(m)
	}
}

// goodbye tells the keeper why the server ends (not after a hand-over: the
// keeper got released).
func (s *server) goodbye(err error) {
	s.mu.Lock()
	handed := s.handedOver
	s.mu.Unlock()
	s.keepMu.Lock()
	k := s.keeper
	s.keepMu.Unlock()
	if handed || k == nil {
		return
	}
	m := KeepMsg{Op: KeepBye, Reason: ByeDetached}
	if err != nil {
		m.Reason, m.Error = byeReason(err), err.Error()
	}
	k.Send(m)
}

func byeReason(err error) string {
	if errors.Is(err, ErrAborted) {
		return ByeAborted
	}
	return ByeFailed
}

// handOver drains for the keeper's hand-over; it reports whether the
// server is done (released).
func (s *server) handOver(k *unixsock.MsgConn) bool {
	began := time.Now()
	if err := s.release(); err != nil {
		s.log.Error("hand-over refused; still serving", "err", err)
		k.Send(KeepMsg{Op: KeepDrainFailed, Error: err.Error()})
		return false
	}
	s.log.Info("handed over: drained, flushed, image released", "took", time.Since(began))
	k.Send(KeepMsg{Op: KeepReleased})
	s.stop()
	return true
}

// release stops serving for a successor: no new control connection is
// taken (the listener stays open in the keeper and the successor, where
// new ones wait), those being answered finish, FUSE requests held are
// answered and no new one is read (they wait in the kernel), the chain is
// flushed and the image closed, releasing its lock. A failed volume is not
// released: a successor opening the image anew would forget the failure.
// On error everything serves on.
func (s *server) release() error {
	ctl, err := s.ln.File()
	if err != nil {
		return fmt.Errorf("attach: control socket: %w", err)
	}
	defer ctl.Close()
	s.ln.Close()
	resume := func() {
		s.allowMerges()
		if ln, err := listenerOf(ctl); err == nil {
			s.ln = ln
			go s.acceptLoop(ln)
		} else {
			s.log.Error("cannot take control connections again after a refused hand-over", "err", err)
		}
	}
	// A merge is cancelled, not waited for (it may take minutes); the
	// driver runs it again on the successor.
	if !s.stopMerges(errDraining, s.opts.RequestTimeout) {
		resume()
		return fmt.Errorf("attach: a merge did not end within %v of its cancel", s.opts.RequestTimeout)
	}
	s.handlers.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readyToRelease(); err != nil {
		resume()
		return err
	}
	conn, err := s.bm.Conn() // to serve again if the drain goes wrong
	if err != nil {
		resume()
		return fmt.Errorf("attach: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
	defer cancel()
	if err := s.bm.Drain(ctx); err != nil {
		conn.Close() // Drain resumed serving
		resume()
		return fmt.Errorf("attach: drain: %w", err)
	}
	if err := s.img.Chain().Flush(); err != nil {
		s.serveAgain(ctx, conn)
		resume()
		return fmt.Errorf("attach: flush after the drain: %w", err)
	}
	conn.Close()
	s.handedOver = true
	s.bm.Close() // drained: releases our descriptors, the connection stays
	if err := s.img.Close(); err != nil {
		s.log.Error("closing the image after the hand-over's flush failed; the successor's open checks it", "err", err)
	}
	return nil
}

// readyToRelease refuses a hand-over of a server that is being torn down
// or whose volume failed; it flushes while still serving, so that the
// drain has little to wait for.
func (s *server) readyToRelease() error {
	if err := s.live(); err != nil {
		return err
	}
	if err := s.failure(); err != nil {
		return err
	}
	if err := s.img.Chain().Flush(); err != nil {
		return fmt.Errorf("attach: flush before the hand-over: %w", err)
	}
	return nil
}

// serveAgain serves the connection anew after a drain whose hand-over was
// abandoned (the drained server cannot resume).
func (s *server) serveAgain(ctx context.Context, conn blockmap.Conn) {
	bm, err := blockmap.Serve(ctx, conn, s.img.Chain(), blockmap.Options{RequestTimeout: s.opts.RequestTimeout, Logger: s.log})
	if err != nil {
		s.log.Error("cannot serve the FUSE connection again after a refused hand-over; its I/O waits for a successor", "err", err)
		return
	}
	s.bm.Close()
	s.bm = bm
}

// listenerOf makes a listener of a listening socket's descriptor (f stays
// the caller's); closing it never removes the socket's path.
func listenerOf(f *os.File) (*net.UnixListener, error) {
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("descriptor %d is not a unix listener", f.Fd())
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}
