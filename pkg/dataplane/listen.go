package dataplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// retirePrevious asks the supervisor that answers on the socket, if any,
// to retire: it stops taking volumes and leaves them to us. newer is set
// when that supervisor is of a newer generation (we are a restarted old
// pod): then we leave it alone.
func (s *Supervisor) retirePrevious(ctx context.Context) (newer bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c := NewClient(s.opts.Socket, 0)
	st, err := c.Retire(ctx, s.opts.Generation)
	switch {
	case errors.Is(err, ErrUnavailable):
		return false, nil
	case errors.Is(err, ErrSuperseded):
		s.log.Warn("a supervisor of a newer generation serves the socket; this one stays idle until it is stopped",
			"socket", s.opts.Socket, "generation", s.opts.Generation, "err", err)
		return true, nil
	case err != nil:
		// A supervisor that does not answer (hung) cannot be retired; its
		// servers are taken over by hand-over all the same.
		s.log.Error("the supervisor on the socket did not retire; taking the socket over", "socket", s.opts.Socket, "err", err)
		return false, nil
	}
	s.log.Info("retired the previous supervisor; taking its volumes over", "pid", st.PID,
		"generation", st.Generation, "binary", st.Binary, "volumes", len(st.Volumes))
	return false, nil
}

// listen binds a fresh socket beside the path and renames it over the
// path: clients always find a socket there, the old supervisor's until the
// rename, ours after.
func (s *Supervisor) listen() (*net.UnixListener, error) {
	dir := filepath.Dir(s.opts.Socket)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dataplane: socket dir: %w", err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := s.opts.Socket + ".new-" + hex.EncodeToString(rnd[:])
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("dataplane: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the path is ours only while it names our socket
	var st unix.Stat_t
	if err := unix.Stat(tmp, &st); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("dataplane: socket: %w", err)
	}
	if err := os.Rename(tmp, s.opts.Socket); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("dataplane: socket: %w", err)
	}
	s.socketID = [2]uint64{st.Dev, st.Ino}
	return ln, nil
}

// unlisten closes the listener and removes the socket path if it still
// names our socket (a successor may have renamed its own over it).
func (s *Supervisor) unlisten(ln *net.UnixListener) {
	var there unix.Stat_t
	if unix.Stat(s.opts.Socket, &there) == nil && [2]uint64{there.Dev, there.Ino} == s.socketID {
		os.Remove(s.opts.Socket)
	}
	ln.Close()
}

// serve answers requests until the listener closes.
func (s *Supervisor) serve(ln *net.UnixListener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go s.serveConn(conn)
	}
}

func (s *Supervisor) serveConn(conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req request
	var resp response
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		resp = errResponse(fmt.Errorf("%w: bad request: %w", errInvalid, err))
	} else if req.Version > ProtocolVersion {
		resp = errResponse(fmt.Errorf("%w: protocol version %d is newer than this supervisor's %d",
			errInvalid, req.Version, ProtocolVersion))
	} else {
		conn.SetReadDeadline(time.Time{})
		resp = s.handle(req)
	}
	resp.Version = ProtocolVersion
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	json.NewEncoder(conn).Encode(resp)
}
