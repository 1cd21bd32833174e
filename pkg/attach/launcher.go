package attach

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// Launcher starts the serving process of an image directory that no server
// answers for. Client.Attach calls it; Client.Detach and Client.Cleanup
// call Cleanup for a directory whose server is gone. Two implementations:
// Spawner (the caller's own detached child, the way the driver worked
// before the data plane, kept for operators, tests and drivers run without
// a data plane) and pkg/dataplane's Client, which asks the data-plane
// supervisor, so that the server does not live in the caller's process
// tree or cgroup.
type Launcher interface {
	// Launch starts a server for the absolute image directory dir and
	// returns its device once it serves. A start that fails or outlives
	// ctx leaves nothing behind; its error says why (the server's log).
	Launch(ctx context.Context, dir string) (device string, err error)
	// Cleanup removes what a dead server of dir left (loop device, FUSE
	// mount, runtime directory); see Client.Cleanup for its errors.
	Cleanup(ctx context.Context, dir string) error
}

// Spawner is the Launcher that starts the serving process as a detached
// child of the calling process ("BINARY image attach --foreground=false
// DIR", in its own session, logging to the runtime directory).
type Spawner struct {
	opts AttachOptions
}

var _ Launcher = (*Spawner)(nil)

// NewSpawner returns a Spawner; opts as for NewClient (Launcher unused).
func NewSpawner(opts AttachOptions) *Spawner {
	return &Spawner{opts: opts.withDefaults()}
}

// Launch implements Launcher.
func (s *Spawner) Launch(ctx context.Context, dir string) (string, error) {
	rt := runtimeDir(s.opts.RunDir, dir)
	if err := cleanup(ctx, s.opts.RunDir, dir, s.opts.Logger); err != nil && !errors.Is(err, ErrBusy) {
		return "", err // ErrBusy: an old loop device stays until its fs is unmounted
	}
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return "", fmt.Errorf("attach: runtime dir: %w", err)
	}
	proc, err := s.spawn(dir, rt)
	if err != nil {
		return "", err
	}
	dev, err := waitReady(ctx, rt, proc.exited)
	if err != nil {
		return "", s.undoStart(dir, rt, proc, err)
	}
	return dev, nil
}

// Cleanup implements Launcher.
func (s *Spawner) Cleanup(ctx context.Context, dir string) error {
	return cleanup(ctx, s.opts.RunDir, dir, s.opts.Logger)
}

// spawned is a serving process this client started.
type spawned struct {
	cmd    *exec.Cmd
	exited <-chan struct{} // closed when it exits
}

// spawn starts the serving process in its own session, logging to the
// runtime directory.
func (s *Spawner) spawn(dir, rt string) (spawned, error) {
	logf, err := os.OpenFile(filepath.Join(rt, logName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return spawned{}, fmt.Errorf("attach: log file: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.opts.Binary, "image", "attach", "--foreground=false", "--run-dir", s.opts.RunDir, dir)
	cmd.Env = append(os.Environ(), s.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return spawned{}, fmt.Errorf("%w: %s: %w", ErrStartFailed, s.opts.Binary, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // reap it whenever it ends
	return spawned{cmd: cmd, exited: done}, nil
}

// waitReady polls the socket until the server reports its device, the
// server exits, or ctx ends.
func waitReady(ctx context.Context, rt string, exited <-chan struct{}) (string, error) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		dev, ok, err := attachedAt(ctx, rt)
		if ok || (err != nil && !unixsock.CtxEnded(ctx, err)) {
			return dev, err
		}
		select {
		case <-exited:
			return "", fmt.Errorf("%w: it exited", ErrStartFailed)
		case <-ctx.Done():
			return "", fmt.Errorf("%w: no answer: %w", ErrStartFailed, ctx.Err())
		case <-t.C:
		}
	}
}

// stopWait bounds how long undoStart waits for a stopped serving process.
const stopWait = 30 * time.Second

// undoStart stops a serving process whose start failed or was given up
// (SIGTERM: a server still starting abandons its start, a ready one
// detaches its unused device), then removes what it left, so that no
// server, loop device or FUSE mount outlives an attach its caller was told
// failed. The error carries the last lines of the server's log.
func (s *Spawner) undoStart(dir, rt string, proc spawned, cause error) error {
	select {
	case <-proc.exited:
	default:
		_ = proc.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-proc.exited:
		case <-time.After(stopWait):
			_ = proc.cmd.Process.Kill()
			<-proc.exited
		}
	}
	err := fmt.Errorf("%w; log: %s", cause, LogTail(rt))
	ctx, cancel := context.WithTimeout(context.Background(), stopWait)
	defer cancel()
	if cerr := cleanup(ctx, s.opts.RunDir, dir, s.opts.Logger); cerr != nil {
		return errors.Join(err, fmt.Errorf("attach: clean up after the failed start: %w", cerr))
	}
	return err
}

// LogTail returns the last lines of the log of the serving process of
// runtime directory rt (for errors about a failed start).
func LogTail(rt string) string { return FileTail(filepath.Join(rt, logName)) }

// FileTail returns the last whole lines of a log file, at most about 2000
// bytes, or why it cannot.
func FileTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	b = bytes.TrimSpace(b)
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:] // whole lines only
		}
	}
	return string(b)
}

// logTailBytes bounds the log lines an error carries.
const logTailBytes = 2000

// defaultLogger is slog.Default(), for options left nil.
func defaultLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}
