// Package dataplane is the data plane's supervisor: the process that keeps
// every attached volume's serving process (pkg/attach) running, whatever
// happens to the CSI driver that asked for it, and that replaces serving
// processes without an I/O error, after a crash and for an upgrade.
//
// The supervisor ("csi-ploop dataplane run") never touches image data. It
// starts a serving process per volume as its child, with a keep channel
// (pkg/attach, keep.go), and holds duplicates of the descriptors that make
// the volume: the FUSE connection, its mount root and the control socket's
// listener. If the serving process dies, the supervisor starts a successor
// on the same descriptors at once; it reopens the image and asks the
// kernel to re-send the requests the dead one had taken. For a hand-over
// (a new binary) a standby successor is started, the old server drains and
// releases the image, and the successor takes over. At its start a
// supervisor adopts the serving processes that run (after its own restart)
// and takes the volumes of another, retiring supervisor over by hand-over
// (a DaemonSet rolling with maxSurge 1: the new pod beside the old one).
//
// The CSI driver talks to it over a unix socket (Client, an
// attach.Launcher) only to attach and to clean up; everything else goes to
// the volume's own control socket, as before.
package dataplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// Defaults.
const (
	// DefaultSocket is the supervisor's socket: beside the volumes'
	// runtime directories, so one hostPath carries both.
	DefaultSocket = attach.DefaultRunDir + "/dataplane.sock"
	// DefaultStartTimeout bounds the start of one serving process.
	DefaultStartTimeout = 2 * time.Minute
)

// Options configure a Supervisor.
type Options struct {
	// Socket the supervisor listens on; "" = DefaultSocket.
	Socket string
	// RunDir is the parent of the volumes' runtime directories; it must
	// be the driver's --run-dir. "" = attach.DefaultRunDir.
	RunDir string
	// Binary is the executable started as serving process; "" =
	// /proc/self/exe, the supervisor's own binary even after the file on
	// disk was replaced (an upgrade of the file reaches the servers by a
	// hand-over to the next supervisor, never by accident at a restart).
	Binary string
	// ServerArgs come before "image attach ..." (tests run a stand-in).
	ServerArgs []string
	// Env is added to the serving processes' environment.
	Env []string
	// Generation orders supervisors (a DaemonSet pod's
	// pod-template-generation): one never retires a newer one, so a
	// restarted container of an old pod cannot take volumes back.
	Generation int64
	// ReadyFile is created once every serving process found at the start
	// is kept (a readiness probe looks at it) and removed at exit.
	ReadyFile string
	// ExitWhenRetired: a retired supervisor whose volumes all went to its
	// successor exits. Off in a DaemonSet, where an exit would restart the
	// container (it waits for SIGTERM instead).
	ExitWhenRetired bool
	// Restart is the crash policy.
	Restart RestartPolicy
	// StartTimeout bounds one serving process's start; 0 = DefaultStartTimeout.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

func (o Options) withDefaults() Options {
	o.Socket = cmp.Or(o.Socket, DefaultSocket)
	o.RunDir = cmp.Or(o.RunDir, attach.DefaultRunDir)
	o.Binary = cmp.Or(o.Binary, "/proc/self/exe")
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Restart = o.Restart.withDefaults()
	return o
}

// Supervisor keeps the serving processes of one node (one run directory).
type Supervisor struct {
	opts     Options
	log      *slog.Logger
	binaryID string
	// attach talks to the volumes' control sockets and cleans up after
	// dead servers (its Launcher is never used: starting is ours).
	attach *attach.Client

	mu      sync.Mutex
	vols    map[string]*volume // by absolute image directory
	ready   bool
	retired bool
	ln      *net.UnixListener
	// socketID is the device and inode of our socket file, to remove it at
	// exit only if a successor has not renamed its own over it.
	socketID [2]uint64
	// attaching counts attach requests in flight (a retire waits for them).
	attaching sync.WaitGroup

	stopping chan struct{} // closed when Run is to return
	stopOnce sync.Once
	emptied  chan struct{} // signalled when a retired supervisor lost its last volume
}

// New returns a Supervisor; Run runs it.
func New(opts Options) *Supervisor {
	opts = opts.withDefaults()
	return &Supervisor{
		opts: opts, log: opts.Logger, binaryID: attach.BinaryID(),
		attach:   attach.NewClient(attach.AttachOptions{RunDir: opts.RunDir, Logger: opts.Logger}),
		vols:     map[string]*volume{},
		stopping: make(chan struct{}),
		emptied:  make(chan struct{}, 1),
	}
}

// Run takes the socket over (retiring the supervisor that has it, unless
// that one is newer), keeps the serving processes that run, serves
// requests until ctx ends or a stop request, and returns. The serving
// processes keep running: the next supervisor adopts them.
func (s *Supervisor) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.opts.RunDir, 0o700); err != nil {
		return fmt.Errorf("dataplane: run dir: %w", err)
	}
	if s.opts.ReadyFile != "" { // a predecessor's (--init restarted us): not ready yet
		if err := os.Remove(s.opts.ReadyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("dataplane: ready file: %w", err)
		}
	}
	newer, err := s.retirePrevious(ctx)
	if err != nil {
		return err
	}
	if newer {
		<-ctx.Done() // stay out of the way until the pod is deleted
		return nil
	}
	ln, err := s.listen()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	go s.serve(ln)
	s.log.Info("data plane supervisor serving", "socket", s.opts.Socket, "runDir", s.opts.RunDir,
		"binary", s.binaryID, "generation", s.opts.Generation, "pid", os.Getpid())
	go s.adoptAll(ctx)
	select {
	case <-ctx.Done():
	case <-s.stopping:
	case <-s.whenRetiredAndEmpty():
		s.log.Info("retired and every volume handed over; exiting")
	}
	s.shutdown()
	return nil
}

// whenRetiredAndEmpty fires when a retired supervisor has nothing left to
// keep, if it is to exit then.
func (s *Supervisor) whenRetiredAndEmpty() <-chan struct{} {
	if !s.opts.ExitWhenRetired {
		return nil
	}
	return s.emptied
}

func (s *Supervisor) stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// shutdown stops listening and lets go of every volume: the serving
// processes keep running without a keeper until the next one.
func (s *Supervisor) shutdown() {
	s.stop()
	s.mu.Lock()
	ln := s.ln
	vols := make([]*volume, 0, len(s.vols))
	for _, v := range s.vols {
		vols = append(vols, v)
	}
	s.mu.Unlock()
	if ln != nil {
		s.unlisten(ln)
	}
	if s.opts.ReadyFile != "" {
		os.Remove(s.opts.ReadyFile)
	}
	for _, v := range vols {
		v.release()
	}
	s.log.Info("data plane supervisor stopped; serving processes keep running", "volumes", len(vols))
}

// volume returns the entry of dir, creating it if create is set.
func (s *Supervisor) volume(dir string, create bool) (*volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := s.vols[dir]; v != nil || !create {
		return v, nil
	}
	select {
	case <-s.stopping:
		return nil, fmt.Errorf("%w: shutting down", ErrRetired)
	default:
	}
	v := newVolume(s, dir)
	s.vols[dir] = v
	return v, nil
}

// forget removes v once its loop has ended.
func (s *Supervisor) forget(v *volume) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vols[v.dir] == v {
		delete(s.vols, v.dir)
	}
	if s.retired && len(s.vols) == 0 {
		select {
		case s.emptied <- struct{}{}:
		default:
		}
	}
}

// status reports the supervisor and its volumes.
func (s *Supervisor) status() Status {
	s.mu.Lock()
	st := Status{PID: os.Getpid(), Binary: s.binaryID, Generation: s.opts.Generation, RunDir: s.opts.RunDir,
		Ready: s.ready, Retired: s.retired}
	vols := make([]*volume, 0, len(s.vols))
	for _, v := range s.vols {
		vols = append(vols, v)
	}
	s.mu.Unlock()
	st.Volumes = []VolumeStatus{}
	for _, v := range vols {
		if vs, ok := v.snapshot(); ok {
			st.Volumes = append(st.Volumes, vs)
		}
	}
	return st
}

// setReady marks the supervisor ready and creates the ready file.
func (s *Supervisor) setReady() error {
	if s.opts.ReadyFile != "" {
		if err := os.WriteFile(s.opts.ReadyFile, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("dataplane: ready file: %w", err)
		}
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	s.log.Info("data plane ready: every serving process found at the start is kept")
	return nil
}

// isRetired reports whether this supervisor takes no new volumes.
func (s *Supervisor) isRetired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retired
}

// errNoDir is the error of a request without an image directory.
var errNoDir = fmt.Errorf("%w: no image directory", attach.ErrInvalid)

// absDir checks a directory from a request.
func absDir(dir string) (string, error) {
	if dir == "" {
		return "", errNoDir
	}
	if dir[0] != '/' {
		return "", fmt.Errorf("%w: %q is not absolute", attach.ErrInvalid, dir)
	}
	return dir, nil
}

// errStopped: a request reached a volume whose loop has ended.
var errStopped = errors.New("dataplane: volume no longer kept")
