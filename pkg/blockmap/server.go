package blockmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

// Server serves one Disk on one FUSE connection.
type Server struct {
	disk Disk
	opts Options
	log  *slog.Logger
	conn Conn // Dev, Dir, Root owned by the server; Init unused after start

	fuse *fuse.Server
	gate *gate
	wd   watchdog
	errs errorLog

	// connID names the connection's directory under
	// /sys/fs/fuse/connections.
	connID uint64

	// rootMu guards conn.Root, which Close closes while it unmounts (an
	// open descriptor keeps the mount busy) and reopens if that fails.
	rootMu sync.RWMutex

	closeMu sync.Mutex
	closed  bool
	drained bool
}

// Serve serves disk on a mounted connection: a fresh one (conn.Init nil:
// Serve answers INIT) or an initialised one it adopts (conn.Init set: no
// INIT comes again; with opts.Resend the kernel first re-sends whatever a
// dead predecessor had taken). conn needs Dev and at least one of Root
// and Dir; a missing Root is opened from Dir.
//
// The Server takes ownership of conn.Dev and conn.Root, also when Serve
// fails: pass duplicates of descriptors you keep (a keeper keeps its own).
// ctx bounds only the start.
func Serve(ctx context.Context, conn Conn, disk Disk, opts Options) (_ *Server, err error) {
	defer func() {
		if err != nil {
			conn.Close() //nolint:errcheck // the start failed; report that
		}
	}()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if conn.Dev == nil || (conn.Root == nil && conn.Dir == "") {
		return nil, fmt.Errorf("%w: Conn needs Dev and Root or Dir", ErrInvalidOptions)
	}
	if conn.Root == nil {
		if conn.Root, err = openRoot(conn.Dir); err != nil {
			return nil, err
		}
	}
	st, err := initState(conn, opts)
	if err != nil {
		return nil, err
	}
	s := &Server{disk: disk, opts: opts, conn: conn, gate: newGate(),
		log: opts.Logger.With("mount", conn.Dir)}
	if err := s.start(st, conn.Init == nil); err != nil {
		return nil, err
	}
	return s, nil
}

// initState answers INIT on a fresh connection, or checks the state of an
// adopted one and asks for the re-send.
func initState(conn Conn, opts Options) (fuse.InitState, error) {
	if conn.Init == nil {
		st, err := fuse.Init(conn.Dev, opts.initOptions())
		if err != nil {
			return st, fmt.Errorf("blockmap: %w", err)
		}
		return st, nil
	}
	st := *conn.Init
	if err := st.Validate(); err != nil {
		return st, fmt.Errorf("blockmap: adopt connection: %w", err)
	}
	if opts.Resend {
		if err := fuse.Resend(conn.Dev, st); err != nil {
			return st, fmt.Errorf("blockmap: adopt connection: %w", err)
		}
	}
	return st, nil
}

// start serves the connection, learns its id and starts the watchdog.
func (s *Server) start(st fuse.InitState, fresh bool) error {
	srv, err := fuse.Serve(s.conn.Dev, st, fuse.Config{
		FileName: s.opts.FileName, File: file{s}, Readers: s.opts.Readers,
		Logger: s.log, Debug: s.opts.Debug,
	})
	if err != nil {
		return fmt.Errorf("blockmap: %w", err)
	}
	s.fuse = srv
	// fstat may ask the server (GETATTR of the root), which serves now.
	var stat unix.Stat_t
	if err := unix.Fstat(int(s.conn.Root.Fd()), &stat); err != nil {
		return errors.Join(fmt.Errorf("blockmap: stat mount root: %w", err), s.stopFailedStart())
	}
	s.connID = fuse.ConnID(stat.Dev)
	if fresh {
		// Before anything in this process opens the file through package
		// os (see fuse.DisablePoll); the kernel remembers it for the
		// connection, so successors need not.
		if err := fuse.DisablePoll(s.conn.Root, s.opts.FileName); err != nil {
			return errors.Join(fmt.Errorf("blockmap: %w", err), s.stopFailedStart())
		}
	}
	if s.opts.RequestTimeout > 0 {
		go s.wd.run(s.opts.RequestTimeout, srv.Done(), s.onOverdue)
	}
	return nil
}

// stopFailedStart drains a server whose start failed after serving began,
// so that the connection is left to the caller as it was.
func (s *Server) stopFailedStart() error {
	return s.fuse.Drain(context.Background(), s.wake)
}

// FilePath is the flat file to attach a loop device to ("" when the mount
// directory is not visible to this process).
func (s *Server) FilePath() string {
	if s.conn.Dir == "" {
		return ""
	}
	return filepath.Join(s.conn.Dir, s.opts.FileName)
}

// InitState is the connection's INIT state.
func (s *Server) InitState() fuse.InitState { return s.fuse.State() }

// Quiesce blocks new requests, waits for those in flight, runs fn and
// resumes. Writers see a pause, never an error. If ctx ends before the
// drain completes, I/O resumes and ctx's error is returned without running
// fn. fn must not do I/O on FilePath (it would wait for itself); it may call
// Resized, which is not gated. Concurrent Quiesce calls run one after
// another.
func (s *Server) Quiesce(ctx context.Context, fn func() error) error {
	return s.gate.quiesce(ctx, fn)
}

// wake makes one request on the connection (statfs is never cached), for
// Drain: each reader asleep in read(2) needs one to return. The request
// may be answered only by the successor, after Drain has returned and
// Close has released conn.Root: it goes through a duplicate of the root
// descriptor, taken under rootMu and owned by this call.
func (s *Server) wake() error {
	fd, err := s.dupRoot()
	if err != nil {
		return err
	}
	var st unix.Statfs_t
	if fd < 0 {
		return unix.Statfs(s.conn.Dir, &st)
	}
	defer unix.Close(fd)
	return unix.Fstatfs(fd, &st)
}

// dupRoot duplicates conn.Root (-1 when there is none).
func (s *Server) dupRoot() (int, error) {
	s.rootMu.RLock()
	defer s.rootMu.RUnlock()
	if s.conn.Root == nil {
		return -1, nil
	}
	fd, err := unix.FcntlInt(s.conn.Root.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("blockmap: duplicate the root descriptor: %w", err)
	}
	return fd, nil
}

// Drain stops serving for a hand-over: requests in flight are answered,
// no new one is taken, and every reader has returned when Drain returns
// nil; the connection stays up for the successor, which must already hold
// it (take Conn first). Requests arriving meanwhile wait in the kernel for
// the successor. If ctx ends first, serving resumes and ctx's error is
// returned. Wait returns after a Drain; Close then releases the
// descriptors without unmounting.
func (s *Server) Drain(ctx context.Context) error {
	err := s.fuse.Drain(ctx, s.wake)
	if err != nil {
		return fmt.Errorf("blockmap: drain: %w", err)
	}
	s.closeMu.Lock()
	s.drained = true
	s.closeMu.Unlock()
	return nil
}

// Wait blocks until the server stops serving: unmount, abort, or Drain.
func (s *Server) Wait() { <-s.fuse.Done() }

// Close unmounts. With a loop device (or any other user) still holding the
// file open it returns an error matching ErrBusy and keeps serving, so that
// nothing loses I/O; detach the loop device and call Close again. After a
// Drain it only releases this server's descriptors. Close is idempotent
// and also cleans up after Abort.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	if !s.drained {
		if err := s.unmount(); err != nil {
			return err
		}
		<-s.fuse.Done()
	}
	s.closed = true
	s.rootMu.Lock() // lock order: closeMu, then rootMu
	defer s.rootMu.Unlock()
	return s.conn.Close()
}

// unmount unmounts the mount directory. The server's own root descriptor
// would keep the mount busy, so it is closed first and reopened if the
// unmount is refused.
func (s *Server) unmount() error {
	if s.conn.Dir == "" {
		return fmt.Errorf("blockmap: cannot unmount: mount directory not visible to this process")
	}
	s.rootMu.Lock()
	defer s.rootMu.Unlock()
	if s.conn.Root != nil {
		s.conn.Root.Close()
		s.conn.Root = nil
	}
	err := unix.Unmount(s.conn.Dir, 0)
	if err == nil || s.goneAway(err) {
		return nil
	}
	root, rerr := openRoot(s.conn.Dir)
	s.conn.Root = root
	if errors.Is(err, unix.EBUSY) {
		return errors.Join(fmt.Errorf("%w: %s: %w", ErrBusy, s.conn.Dir, err), rerr)
	}
	return errors.Join(fmt.Errorf("blockmap: unmount %s: %w", s.conn.Dir, err), rerr)
}

// goneAway reports whether an unmount error only says that someone else
// already unmounted the file system.
func (s *Server) goneAway(err error) bool {
	select {
	case <-s.fuse.Done():
		return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT)
	default:
		return false
	}
}
