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

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
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
	// Keeper is the keep channel of a server a keeper started ("image
	// attach --keeper-fd"); its first message says how to start (see
	// keep.go). Nil: standalone, the server mounts and attaches by itself
	// (a keeper may still take it over later through the "keep" op).
	Keeper *unixsock.MsgConn
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
// and ErrAborted if the FUSE connection was aborted. A kept server also
// returns nil after it handed the volume over to a successor.
func Serve(ctx context.Context, dir string, opts ServeOptions) (err error) {
	began := time.Now()
	opts = opts.withDefaults()
	if opts.Keeper != nil {
		defer opts.Keeper.Close()
	}
	abs, err := absDir(dir)
	if err != nil {
		return err
	}
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	var s *server
	if opts.Keeper == nil {
		s, err = start(ctx, abs, opts)
	} else {
		s, err = startKept(ctx, abs, opts)
	}
	if errors.Is(err, errNotNeeded) {
		return nil // a standby successor that was not needed
	}
	if err != nil {
		tellKeeper(opts.Keeper, KeepMsg{Op: KeepBye, Reason: byeReason(err), Error: err.Error()})
		return err
	}
	s.log.Info("attached", "device", s.dev, "mode", s.mode, "took", time.Since(began))
	if opts.Ready != nil {
		opts.Ready(s.status())
	}
	if opts.Keeper != nil {
		if err := s.readyForKeeper(opts.Keeper); err != nil {
			s.log.Error("cannot report to the keeper; serving without one", "err", err)
		}
	}
	err = s.run(ctx)
	s.goodbye(err)
	return err
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
	// handedOver: a hand-over drained FUSE and closed the image (under mu).
	handedOver bool
	// mode is how the server started: standalone, fresh or adopt.
	mode string

	// handlers counts control connections being answered (a hand-over
	// waits for them before it drains).
	handlers sync.WaitGroup
	// merges: the running merge (merge.go), not under mu.
	merges merges

	keepMu   sync.Mutex
	keeper   *unixsock.MsgConn // nil when no keeper holds our descriptors
	keptEver bool              // a keeper holds (or held) a root descriptor

	stopped  chan struct{} // closed once torn down and answered
	stopOnce sync.Once
}

func (s *server) status() Status {
	c := s.img.Chain()
	s.keepMu.Lock()
	kept := s.keeper != nil
	s.keepMu.Unlock()
	st := Status{Device: s.dev, PID: os.Getpid(), Dir: s.dir, Depth: c.Depth(), Size: c.Size(), Binary: BinaryID(), Kept: kept,
		Merge: s.mergeStatus()}
	if err := s.health(); err != nil {
		st.Failure = err.Error()
	}
	return st
}

// run serves control requests until the device is detached or handed
// over.
func (s *server) run(ctx context.Context) error {
	go s.acceptLoop(s.ln)
	dead := make(chan struct{})
	go s.watchFUSE(dead)
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

// watchFUSE closes dead when the FUSE server stops serving (the one in
// use then: a hand-over that failed after its drain serves anew).
func (s *server) watchFUSE(dead chan<- struct{}) {
	for {
		s.mu.Lock()
		bm := s.bm
		s.mu.Unlock()
		bm.Wait()
		s.mu.Lock()
		same := s.bm == bm
		s.mu.Unlock()
		if same {
			close(dead)
			return
		}
	}
}

// connectionEnded handles the end of FUSE serving: our own detach or
// hand-over, or an abort (watchdog, fusectl, someone unmounted us).
func (s *server) connectionEnded() error {
	s.mu.Lock()
	ours := s.torn.fuse || s.handedOver
	s.mu.Unlock()
	if ours {
		<-s.stopped // the detach or hand-over is being answered
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

// acceptLoop answers control connections until ln is closed.
func (s *server) acceptLoop(ln *net.UnixListener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return // closed
		}
		s.handlers.Add(1)
		go func() {
			defer s.handlers.Done()
			s.serveControl(conn.(*net.UnixConn))
		}()
	}
}
