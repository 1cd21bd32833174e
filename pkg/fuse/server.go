package fuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// File is the data of the one regular file. Its methods are called
// concurrently and answer with 0 or the errno the kernel gets.
type File interface {
	// Size is the file's size in bytes.
	Size() int64
	// ReadAt fills p (page aligned, at most one request long) from off;
	// fewer bytes than len(p) mean end of file.
	ReadAt(p []byte, off int64) (int, unix.Errno)
	// WriteAt writes p (page aligned when the request is) at off.
	WriteAt(p []byte, off int64) (int, unix.Errno)
	// Flush makes everything written so far durable; both FLUSH (every
	// close of a descriptor) and FSYNC land here.
	Flush() unix.Errno
	// Fallocate is fallocate(2)'s mode, offset and length, as the kernel
	// forwards them (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE). Answering ENOSYS
	// or EOPNOTSUPP makes the kernel stop sending fallocate for the mount.
	Fallocate(off, length int64, mode uint32) unix.Errno
}

// Config configures a Server.
type Config struct {
	// FileName is the name of the file in the root directory.
	FileName string
	// File provides the file's data.
	File File
	// Readers is the number of classic reader goroutines; 0 means
	// DefaultReaders.
	Readers int
	// Logger gets malformed requests and transport errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// Debug logs every request and its reply at info level (slow).
	Debug bool
}

// ErrInvalidConfig: a Config fails validation.
var ErrInvalidConfig = errors.New("fuse: invalid config")

func (c Config) validate() error {
	if c.File == nil {
		return fmt.Errorf("%w: no File", ErrInvalidConfig)
	}
	if !ValidFileName(c.FileName) {
		return fmt.Errorf("%w: file name %q", ErrInvalidConfig, c.FileName)
	}
	return nil
}

// ValidFileName reports whether name can name the file in the root
// directory: one path component, neither "." nor "..".
func ValidFileName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// Server serves the fixed namespace (root directory, one file) on an
// initialised connection.
type Server struct {
	cfg       Config
	dev       *os.File
	st        InitState
	t         Transport
	log       *slog.Logger
	malformed atomic.Uint64
}

// Serve starts serving the connection on dev, whose INIT settled st: the
// state Init returned, or the one a predecessor passed on (a successor
// that adopts the connection; send Resend first if the predecessor died).
// It returns at once. The server does not own dev (its transport reads a
// duplicate of its own).
func Serve(dev *os.File, st InitState, cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := st.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, dev: dev, st: st, log: cfg.Logger}
	t, err := NewClassic(dev, st, cfg.Readers, cfg.Logger)
	if err != nil {
		return nil, err
	}
	s.t = t
	if err := s.t.Start(s); err != nil {
		return nil, err
	}
	return s, nil
}

// State is the connection's INIT state, for a successor.
func (s *Server) State() InitState { return s.st }

// Done is closed when the server stopped serving: after Drain, or when the
// connection ended (Err says which).
func (s *Server) Done() <-chan struct{} { return s.t.Done() }

// Err is nil after a Drain, ErrConnEnded after an unmount or abort.
func (s *Server) Err() error { return s.t.Err() }

// Drain stops serving for a hand-over; see Transport.Drain. wake must make
// one request on this connection (statfs on the mount's root).
func (s *Server) Drain(ctx context.Context, wake func() error) error {
	return s.t.Drain(ctx, wake)
}

// InvalidateFile drops the kernel's cached attributes of the file (its
// size, after the File grew). Nothing cached is not an error.
func (s *Server) InvalidateFile() error {
	err := InvalidateInode(s.dev, FileID, -1, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// Handle implements Handler.
func (s *Server) Handle(req *Request, rep *Reply) {
	s.dispatch(req, rep)
	if s.cfg.Debug {
		s.log.Info("fuse request", "op", req.Header.Opcode, "unique", req.Header.Unique,
			"node", req.Header.NodeID, "errno", rep.errno, "arg", len(rep.Arg()), "data", len(rep.data))
	}
}

// Malformed implements Handler: log (rate-limited: a kernel bug would
// repeat) and answer EINVAL, or EIO when not even the header was whole.
func (s *Server) Malformed(req *Request, err error, rep *Reply) {
	if n := s.malformed.Add(1); bits.OnesCount64(n) == 1 {
		s.log.Error("fuse: malformed request", "unique", req.Header.Unique,
			"opcode", req.Header.Opcode, "count", n, "err", err)
	}
	switch {
	case !NeedsReply(req.Header.Opcode):
		rep.NoReply()
	case req.Header.Len == 0:
		rep.Fail(unix.EIO)
	default:
		rep.Fail(unix.EINVAL)
	}
}
