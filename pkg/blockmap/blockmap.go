// Package blockmap serves a Disk to the kernel as one flat regular file on a
// FUSE mount, so that a loop device can be attached to that file. This is
// the bridge between user-space ploop images and a block device on machines
// without device-mapper, nbd or ublk. The FUSE protocol is pkg/fuse.
//
// The mount is tuned for loop with direct I/O on top: the server asks for
// FUSE_ASYNC_DIO (without it the kernel serves loop's async direct I/O one
// request at a time), opens the file with FOPEN_DIRECT_IO and
// FOPEN_PARALLEL_DIRECT_WRITES, uses 1 MiB requests and allows 64
// background requests. It mounts directly with mount(2), so it must run as
// root and needs no fusermount.
//
// A connection can outlive its server. Mount mounts and serves in one
// step; MountConn only mounts (a keeper holds the descriptor), Serve serves
// a mounted connection, answering INIT on a fresh one or adopting one that
// is initialised already (a successor after a hand-over, or after the
// previous server died, then asking the kernel to re-send what the dead
// server had taken). Server.Conn hands out what a successor needs;
// Server.Drain stops serving without disturbing the connection.
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
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
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
	DefaultMaxWrite       = fuse.MaxMaxWrite // the kernel's limit (256 pages)
	DefaultMaxBackground  = fuse.DefaultMaxBackground
)

// Sentinel errors.
var (
	// ErrBusy: the mount is still in use, typically by a loop device.
	ErrBusy = errors.New("blockmap: mount is busy (detach the loop device first)")
	// ErrInvalidOptions: Options failed validation.
	ErrInvalidOptions = errors.New("blockmap: invalid options")
)

// Options configure Mount and Serve. The zero value is usable.
type Options struct {
	// FileName is the name of the flat file in the mount directory.
	FileName string

	// RequestTimeout bounds how long one Disk call may run. When a call
	// exceeds it, the FUSE connection is aborted (see Server.Abort): all
	// I/O on the file, and on a loop device above it, fails with errors
	// instead of hanging in D state for ever. Requests waiting behind a
	// Quiesce are not counted; bound those with Quiesce's context.
	// 0 means DefaultRequestTimeout; negative disables the watchdog.
	RequestTimeout time.Duration

	// KernelRequestTimeout, when positive, asks the kernel in INIT
	// (FUSE_REQUEST_TIMEOUT) to abort the connection when any request
	// stays unanswered that long; it also catches a stopped or absent
	// server, which the watchdog cannot. Latched for the connection's
	// life: hand-overs and restarts after a crash must finish well within
	// it. Used only by a fresh INIT. 0: none.
	KernelRequestTimeout time.Duration

	// MaxWrite is the largest read or write request; 0 means
	// DefaultMaxWrite, which is also the maximum. Each FUSE reader holds
	// a buffer of about this size.
	MaxWrite int

	// MaxBackground is how many async requests the kernel keeps in
	// flight; 0 means DefaultMaxBackground. Used only by a fresh INIT.
	MaxBackground int

	// Readers is the number of goroutines reading requests; 0 means
	// fuse.DefaultReaders.
	Readers int

	// Resend, when Serve adopts an initialised connection, first asks the
	// kernel to re-send every request a previous server read and did not
	// answer (FUSE_NOTIFY_RESEND, Linux 6.9). Use it after that server
	// died, never while it still serves (its requests would run twice).
	Resend bool

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
	if !fuse.ValidFileName(o.FileName) {
		return o, fmt.Errorf("%w: file name %q", ErrInvalidOptions, o.FileName)
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MaxWrite <= 0 || o.MaxWrite > DefaultMaxWrite {
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

func (o Options) initOptions() fuse.InitOptions {
	return fuse.InitOptions{MaxWrite: o.MaxWrite, MaxBackground: o.MaxBackground,
		RequestTimeout: o.KernelRequestTimeout}
}

// Mount mounts a FUSE filesystem on mountDir (created if missing) holding
// one file that reads and writes disk, and serves it until Close or until
// the connection ends. Must run as root. ctx bounds only the mount itself.
// The Server owns the mount and its descriptors.
func Mount(ctx context.Context, mountDir string, disk Disk, opts Options) (*Server, error) {
	conn, err := MountConn(ctx, mountDir, opts) // checks ctx and opts before mounting
	if err != nil {
		return nil, err
	}
	dir := conn.Dir
	s, err := Serve(ctx, conn, disk, opts)
	if err != nil {
		return nil, errors.Join(err, unmountAbandoned(dir))
	}
	return s, nil
}
