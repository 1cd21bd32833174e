package attach

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// ServeOptions configure Serve. The zero value is usable.
type ServeOptions struct {
	// RunDir is the parent of the runtime directories; "" = DefaultRunDir.
	RunDir string
	// RequestTimeout bounds one disk request before the FUSE connection is
	// aborted; 0 = DefaultRequestTimeout. It also bounds the drain of a
	// snapshot or grow.
	RequestTimeout time.Duration
	// Logger; nil = slog.Default().
	Logger *slog.Logger
	// Ready, if set, is called once the device and the control socket are
	// up (the command prints the device path from it).
	Ready func(Status)
}

func (o ServeOptions) withDefaults() ServeOptions {
	o.RunDir = cmp.Or(o.RunDir, DefaultRunDir)
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Serve attaches the image directory dir as a loop device and serves it
// until a detach request, or until ctx ends and the device can be detached
// (when ctx ends while a filesystem is still mounted on the device, Serve
// logs that and keeps serving: pulling the device away would fail the
// filesystem). It returns ErrAlreadyAttached if another process serves dir,
// and ErrAborted if the FUSE connection was aborted.
func Serve(ctx context.Context, dir string, opts ServeOptions) error {
	opts = opts.withDefaults()
	abs, err := absDir(dir)
	if err != nil {
		return err
	}
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	s, err := start(ctx, abs, opts)
	if err != nil {
		return err
	}
	s.log.Info("attached", "device", s.dev)
	if opts.Ready != nil {
		opts.Ready(s.status())
	}
	return s.run(ctx)
}

// startProfile starts a CPU profile when CPUProfileEnv names a file.
func startProfile() (stop func(), err error) {
	path := os.Getenv(CPUProfileEnv)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("attach: cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("attach: cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// server is the state of one serving process.
type server struct {
	dir, rt string
	opts    ServeOptions
	log     *slog.Logger
	img     *image.Image
	bm      *blockmap.Server
	// health is the sticky failure of the chain (nil while healthy).
	health  func() error
	failLog sync.Once // the failure is logged once, when it is first seen
	dev     string
	// file identifies our FUSE file (st_dev, inode), which the loop
	// device must still be attached to.
	file struct{ dev, ino uint64 }
	ln   *net.UnixListener

	mu   sync.Mutex // one control operation at a time
	torn struct{ loop, fuse, image, done bool }

	stopped  chan struct{} // closed once torn down and answered
	stopOnce sync.Once
}

// start locks the image, mounts it, attaches the loop device and listens.
// On error everything done so far is undone.
func start(ctx context.Context, dir string, opts ServeOptions) (_ *server, err error) {
	img, err := image.OpenDir(dir, image.OpenOptions{})
	if errors.Is(err, image.ErrBusy) {
		return nil, fmt.Errorf("%w: %s: %w", ErrAlreadyAttached, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("attach: open %s: %w", dir, err)
	}
	rt := runtimeDir(opts.RunDir, dir)
	s := &server{dir: dir, rt: rt, opts: opts, img: img, stopped: make(chan struct{}),
		log: opts.Logger.With("dir", dir), health: func() error { return chainFailure(img.Chain()) }}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.abandon())
		}
	}()
	// We hold the image lock: whatever is in rt was left by a dead server.
	if err := cleanupStale(rt, s.log); err != nil && !errors.Is(err, ErrBusy) {
		return nil, err
	}
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return nil, fmt.Errorf("attach: runtime dir: %w", err)
	}
	if err := s.attachDevice(ctx); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(rt, socketName), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("attach: control socket: %w", err)
	}
	s.ln = ln
	return s, nil
}

// attachDevice mounts the FUSE file and attaches a loop device to it.
func (s *server) attachDevice(ctx context.Context) error {
	bm, err := blockmap.Mount(ctx, filepath.Join(s.rt, mountName), s.img.Chain(), blockmap.Options{
		RequestTimeout: s.opts.RequestTimeout,
		Logger:         s.log,
	})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	s.bm = bm
	var st unix.Stat_t
	if err := unix.Stat(bm.FilePath(), &st); err != nil {
		return fmt.Errorf("attach: stat %s: %w", bm.FilePath(), err)
	}
	s.file.dev, s.file.ino = st.Dev, st.Ino
	info, err := loopdev.AttachInfo(ctx, bm.FilePath(), loopdev.Options{DirectIO: true, BlockSize: 4096})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	s.dev = info.Path
	return nil
}

// abandon undoes a failed start (nobody knows the device yet, so no
// filesystem can be mounted on it). It keeps the log: the client reports
// its last lines and then removes the runtime directory.
func (s *server) abandon() error {
	var errs []error
	if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	if s.dev != "" {
		// A udev probe may hold the new device for a moment: the kernel
		// then detaches it on the last close, and only after that can the
		// FUSE mount go.
		if err := loopdev.Detach(s.dev); err != nil && !errors.Is(err, loopdev.ErrBusy) {
			errs = append(errs, err)
		} else if err := s.waitLoopReleased(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.bm != nil {
		errs = append(errs, s.closeFUSE(true))
	}
	errs = append(errs, s.img.Close())
	errs = append(errs, removeAllBut(s.rt, logName))
	return errors.Join(errs...)
}

// closeFUSE unmounts the FUSE file once no loop device holds it. The kernel
// drops a released loop device's reference to the file a moment after
// sysfs says it is detached, so a busy unmount is retried for a while. A
// mount that stays busy (someone else opened the file) is, when lazy is
// set, detached lazily rather than left behind (the kernel ends the
// connection when its last user goes); otherwise the busy error is returned
// and the server keeps serving.
func (s *server) closeFUSE(lazy bool) error {
	deadline := time.Now().Add(fuseReleaseWait)
	for {
		err := s.bm.Close()
		if err == nil || !errors.Is(err, blockmap.ErrBusy) {
			return err
		}
		if time.Now().After(deadline) {
			if !lazy {
				return fmt.Errorf("%w: %w", ErrBusy, err)
			}
			s.log.Warn("FUSE mount still busy; detaching it lazily", "mount", filepath.Join(s.rt, mountName), "err", err)
			if err := unix.Unmount(filepath.Join(s.rt, mountName), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("attach: lazy unmount: %w", err)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fuseReleaseWait bounds how long closeFUSE waits for the kernel to drop
// the last reference to the FUSE file.
const fuseReleaseWait = 5 * time.Second

// removeAllBut removes everything in dir except the file keep.
func removeAllBut(dir, keep string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Name() != keep {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

func (s *server) status() Status {
	c := s.img.Chain()
	st := Status{Device: s.dev, PID: os.Getpid(), Dir: s.dir, Depth: c.Depth(), Size: c.Size(), Binary: BinaryID()}
	if err := s.health(); err != nil {
		st.Failure = err.Error()
	}
	return st
}

// run serves control requests until the device is detached.
func (s *server) run(ctx context.Context) error {
	go s.acceptLoop()
	dead := make(chan struct{})
	go func() { s.bm.Wait(); close(dead) }()
	sig := ctx.Done()
	health := time.NewTicker(healthEvery)
	defer health.Stop()
	for {
		select {
		case <-health.C:
			s.noteFailure()
		case <-s.stopped:
			return nil
		case <-dead:
			return s.connectionEnded()
		case <-sig:
			err := s.detach()
			if err == nil {
				s.stop()
				return nil
			}
			s.log.Error("shutdown requested, but the device cannot be detached; still serving", "err", err)
			sig = nil
		}
	}
}

// connectionEnded handles the end of FUSE serving: our own detach, or an
// abort (watchdog, fusectl, someone unmounted us).
func (s *server) connectionEnded() error {
	s.mu.Lock()
	ours := s.torn.fuse
	s.mu.Unlock()
	if ours {
		<-s.stopped // the detach request is being answered
		return nil
	}
	s.log.Error("FUSE connection ended unexpectedly; the device now fails all I/O")
	s.ln.Close()
	os.Remove(filepath.Join(s.rt, socketName))
	// The image is not closed: a Disk call may still hang in it, and the
	// in-use mark rightly records an unclean shutdown. Cleanup removes
	// the loop device and the mount once their users are gone.
	return fmt.Errorf("%w: %s (device %s)", ErrAborted, s.dir, s.dev)
}

func (s *server) stop() { s.stopOnce.Do(func() { close(s.stopped) }) }

func (s *server) acceptLoop() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		go serveConn(conn, s.handle)
	}
}
