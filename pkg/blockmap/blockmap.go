// Package blockmap serves a Disk to the kernel as one flat regular file on a
// FUSE mount, so that a loop device can be attached to that file. This is
// the bridge between user-space ploop images and a block device on machines
// without device-mapper, nbd or ublk.
//
// The mount is tuned for loop with direct I/O on top: the server asks for
// CAP_ASYNC_DIO (without it the kernel serves loop's async direct I/O one
// request at a time), opens the file with FOPEN_DIRECT_IO and
// FOPEN_PARALLEL_DIRECT_WRITES, uses 1 MiB requests and allows 64
// background requests. It mounts directly with mount(2), so it must run as
// root and needs no fusermount.
//
// Teardown order matters: unmount whatever filesystem sits on the loop
// device, detach the loop device, then Close the Server. Close refuses
// (ErrBusy) while the loop device still holds the file open, and keeps
// serving, because pulling the file away would fail every I/O of the loop
// device.
package blockmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Disk is what the Server exposes. All methods may be called concurrently.
type Disk interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes everything written so far durable.
	Flush() error
	// Discard makes the range read back as zeros. Both PUNCH_HOLE and
	// ZERO_RANGE requests land here.
	Discard(off, length int64) error
	Size() int64
}

// Defaults for Options.
const (
	DefaultFileName       = "disk"
	DefaultRequestTimeout = 2 * time.Minute
	DefaultMaxWrite       = 1 << 20 // the kernel's limit (256 pages)
	DefaultMaxBackground  = 64
)

// Sentinel errors.
var (
	// ErrBusy: the mount is still in use, typically by a loop device.
	ErrBusy = errors.New("blockmap: mount is busy (detach the loop device first)")
	// ErrInvalidOptions: Options failed validation.
	ErrInvalidOptions = errors.New("blockmap: invalid options")
)

// Options configure Mount. The zero value is usable.
type Options struct {
	// FileName is the name of the flat file in the mount directory.
	FileName string

	// RequestTimeout bounds how long one Disk call may run. When a call
	// exceeds it, the FUSE connection is aborted (see Server.Abort): all
	// I/O on the file, and on a loop device above it, fails with errors
	// instead of hanging in D state for ever. Requests waiting behind a
	// Quiesce are not counted; bound those with Quiesce's context.
	// 0 means DefaultRequestTimeout; negative disables the watchdog.
	//
	// go-fuse v2.12.1 cannot send a per-connection timeout in FUSE_INIT.
	// The kernel's own timeout, /proc/sys/fs/fuse/default_request_timeout,
	// is global to the machine and read at mount time; it also catches a
	// stopped (SIGSTOP) server, which this watchdog cannot.
	RequestTimeout time.Duration

	// MaxWrite is the largest read or write request; 0 means
	// DefaultMaxWrite. go-fuse caps it at the kernel's limit. Every request
	// in flight holds a buffer of about this size, so memory use peaks
	// near (MaxBackground + a few) * MaxWrite.
	MaxWrite int

	// MaxBackground is how many async requests the kernel keeps in
	// flight; 0 means DefaultMaxBackground.
	MaxBackground int

	// Logger receives Disk errors and watchdog events; nil means
	// slog.Default().
	Logger *slog.Logger

	// Debug logs every FUSE request (slow; for debugging only).
	Debug bool
}

func (o Options) withDefaults() (Options, error) {
	if o.FileName == "" {
		o.FileName = DefaultFileName
	}
	if o.FileName == "." || o.FileName == ".." || strings.ContainsAny(o.FileName, "/\x00") {
		return o, fmt.Errorf("%w: file name %q", ErrInvalidOptions, o.FileName)
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MaxWrite <= 0 {
		o.MaxWrite = DefaultMaxWrite
	}
	if o.MaxBackground <= 0 {
		o.MaxBackground = DefaultMaxBackground
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Server serves one Disk on one FUSE mount.
type Server struct {
	disk     Disk
	opts     Options
	log      *slog.Logger
	mountDir string
	filePath string

	fuse    *fuse.Server
	gate    *gate
	wd      watchdog
	results sync.Pool // *readResult
	errs    errorLog

	// connDev is the kernel dev_t of the FUSE superblock; it names the
	// connection's directory under /sys/fs/fuse/connections.
	connDev uint64

	done chan struct{} // closed when serving ends (unmount or abort)

	closeMu sync.Mutex
	closed  bool
}

// Mount mounts a FUSE filesystem on mountDir (created if missing) holding
// one file that reads and writes disk, and serves it until Close or until
// the connection ends. Must run as root. ctx bounds only the mount itself.
func Mount(ctx context.Context, mountDir string, disk Disk, opts Options) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(mountDir)
	if err != nil {
		return nil, fmt.Errorf("blockmap: mount dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blockmap: mount dir: %w", err)
	}
	s := newServer(dir, disk, opts)
	if err := s.start(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

func newServer(dir string, disk Disk, opts Options) *Server {
	s := &Server{
		disk:     disk,
		opts:     opts,
		log:      opts.Logger.With("mount", dir),
		mountDir: dir,
		filePath: filepath.Join(dir, opts.FileName),
		gate:     newGate(),
		done:     make(chan struct{}),
	}
	s.results.New = func() any { return &readResult{pool: &s.results} }
	return s
}

// start mounts, starts serving and the watchdog.
func (s *Server) start() error {
	raw := &rawFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), srv: s, name: s.opts.FileName}
	srv, err := fuse.NewServer(raw, s.mountDir, s.mountOptions())
	if err != nil {
		return fmt.Errorf("blockmap: mount %s: %w", s.mountDir, err)
	}
	s.fuse = srv
	go func() {
		srv.Serve()
		close(s.done)
	}()
	if err := srv.WaitMount(); err != nil {
		return errors.Join(fmt.Errorf("blockmap: mount %s: %w", s.mountDir, err), s.Close())
	}
	var st unix.Stat_t
	if err := unix.Stat(s.mountDir, &st); err != nil {
		return errors.Join(fmt.Errorf("blockmap: stat mount: %w", err), s.Close())
	}
	s.connDev = kernelDev(st.Dev)
	if s.opts.RequestTimeout > 0 {
		go s.wd.run(s.opts.RequestTimeout, s.done, s.onOverdue)
	}
	return nil
}

// mountOptions: why each setting is there is in the package comment and
// in docs/../shared/notes/fuse-and-loop-on-this-machine.md.
func (s *Server) mountOptions() *fuse.MountOptions {
	return &fuse.MountOptions{
		FsName:            "blockmap",
		Name:              "blockmap",
		DirectMountStrict: true,
		MaxWrite:          s.opts.MaxWrite,
		MaxBackground:     s.opts.MaxBackground,
		// go-fuse masks the kernel's offer with its own list;
		// ExtraCapabilities adds to that list.
		ExtraCapabilities:  fuse.CAP_ASYNC_DIO,
		DisableXAttrs:      true,
		DisableReadDirPlus: true,
		// Splicing only helps fd-backed read results; for byte
		// results go-fuse would set up a pipe and then give up.
		DisableSplice: true,
		Debug:         s.opts.Debug,
		Logger:        slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// kernelDev converts a user-space st_dev into the kernel's internal dev_t
// encoding (major<<20 | minor), which fusectl uses as directory name.
func kernelDev(dev uint64) uint64 {
	return uint64(unix.Major(dev))<<20 | uint64(unix.Minor(dev))
}

// FilePath is the flat file to attach a loop device to.
func (s *Server) FilePath() string { return s.filePath }

// Quiesce blocks new requests, waits for those in flight, runs fn and
// resumes. Writers see a pause, never an error. If ctx ends before the
// drain completes, I/O resumes and ctx's error is returned without running
// fn. fn must not do I/O on FilePath (it would wait for itself); it may call
// Resized, which is not gated. Concurrent Quiesce calls run one after
// another.
func (s *Server) Quiesce(ctx context.Context, fn func() error) error {
	return s.gate.quiesce(ctx, fn)
}

// Wait blocks until the file system is unmounted or the connection ends.
func (s *Server) Wait() { <-s.done }

// Close unmounts. With a loop device (or any other user) still holding the
// file open it returns an error matching ErrBusy and keeps serving, so that
// nothing loses I/O; detach the loop device and call Close again. Close is
// idempotent and also cleans up after Abort.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	if err := s.fuse.Unmount(); err != nil && !s.goneAway(err) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s: %w", ErrBusy, s.mountDir, err)
		}
		return fmt.Errorf("blockmap: unmount %s: %w", s.mountDir, err)
	}
	<-s.done
	s.closed = true
	return nil
}

// goneAway reports whether an unmount error only says that someone else
// already unmounted the file system.
func (s *Server) goneAway(err error) bool {
	select {
	case <-s.done:
		return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT)
	default:
		return false
	}
}
