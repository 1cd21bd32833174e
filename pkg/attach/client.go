package attach

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// AttachOptions configure a Client. The zero value is usable.
type AttachOptions struct {
	// Binary is the csi-ploop executable started as the serving process;
	// "" = DefaultBinary (looked up in PATH).
	Binary string
	// RunDir is the parent of the runtime directories; "" = DefaultRunDir.
	// It must be the same for the client and the servers.
	RunDir string
	// Env is added to the serving process's environment (e.g.
	// CSI_PLOOP_CPUPROFILE=/tmp/x.prof).
	Env []string
	// Logger; nil = slog.Default().
	Logger *slog.Logger
}

// Client attaches and controls images through their serving processes. It
// implements volume.Attacher. Safe for concurrent use on different images;
// the caller serializes operations on one image.
type Client struct {
	opts AttachOptions
}

// NewClient returns a Client.
func NewClient(opts AttachOptions) *Client {
	opts.Binary = cmp.Or(opts.Binary, DefaultBinary)
	opts.RunDir = cmp.Or(opts.RunDir, DefaultRunDir)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Client{opts: opts}
}

// probeTimeout bounds the status probe of a possibly hung server.
const probeTimeout = 5 * time.Second

// pollEvery is how often Attach asks a starting server for its device.
const pollEvery = 20 * time.Millisecond

// Attach returns the device of the attached image dir, starting a detached
// serving process ("BINARY image attach --foreground=false DIR") if none
// runs, after cleaning up what a dead one left. ctx bounds the wait. A
// start that fails or does not finish within ctx is undone: the process is
// stopped, its leftovers are removed, and the error carries the end of its
// log.
func (c *Client) Attach(ctx context.Context, dir string) (string, error) {
	abs, rt, err := c.paths(dir)
	if err != nil {
		return "", err
	}
	if dev, ok, err := c.attached(ctx, rt); err != nil || ok {
		return dev, err
	}
	if err := cleanup(ctx, c.opts.RunDir, abs, c.opts.Logger); err != nil && !errors.Is(err, ErrBusy) {
		return "", err // ErrBusy: an old loop device stays until its fs is unmounted
	}
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return "", fmt.Errorf("attach: runtime dir: %w", err)
	}
	proc, err := c.spawn(abs, rt)
	if err != nil {
		return "", err
	}
	dev, err := c.waitReady(ctx, rt, proc.exited)
	if err != nil {
		return "", c.undoStart(abs, rt, proc, err)
	}
	return dev, nil
}

// spawned is a serving process this client started.
type spawned struct {
	cmd    *exec.Cmd
	exited <-chan struct{} // closed when it exits
}

// spawn starts the serving process in its own session, logging to the
// runtime directory.
func (c *Client) spawn(dir, rt string) (spawned, error) {
	logf, err := os.OpenFile(filepath.Join(rt, logName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return spawned{}, fmt.Errorf("attach: log file: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(c.opts.Binary, "image", "attach", "--foreground=false", "--run-dir", c.opts.RunDir, dir)
	cmd.Env = append(os.Environ(), c.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return spawned{}, fmt.Errorf("%w: %s: %w", ErrStartFailed, c.opts.Binary, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // reap it whenever it ends
	return spawned{cmd: cmd, exited: done}, nil
}

// waitReady polls the socket until the server reports its device, the
// server exits, or ctx ends.
func (c *Client) waitReady(ctx context.Context, rt string, exited <-chan struct{}) (string, error) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		dev, ok, err := c.attached(ctx, rt)
		if ok || (err != nil && ctx.Err() == nil) {
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
func (c *Client) undoStart(dir, rt string, proc spawned, cause error) error {
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
	err := fmt.Errorf("%w; log: %s", cause, logTail(rt))
	ctx, cancel := context.WithTimeout(context.Background(), stopWait)
	defer cancel()
	if cerr := cleanup(ctx, c.opts.RunDir, dir, c.opts.Logger); cerr != nil {
		return errors.Join(err, fmt.Errorf("attach: clean up after the failed start: %w", cerr))
	}
	return err
}

// logTail returns the last lines of a serving process's log.
func logTail(rt string) string {
	b, err := os.ReadFile(filepath.Join(rt, logName))
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

// attached asks the server of rt for its device: ok is false when no
// server answers.
func (c *Client) attached(ctx context.Context, rt string) (string, bool, error) {
	resp, err := call(ctx, rt, request{Op: opStatus})
	if errors.Is(err, ErrNotAttached) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return resp.Status.Device, true, nil
}

// Attached reports the device of dir if a server answers for it.
func (c *Client) Attached(ctx context.Context, dir string) (string, bool, error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return "", false, err
	}
	return c.attached(ctx, rt)
}

// Status asks the serving process of dir; ErrNotAttached if none answers.
func (c *Client) Status(ctx context.Context, dir string) (Status, error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return Status{}, err
	}
	resp, err := call(ctx, rt, request{Op: opStatus})
	if err != nil {
		return Status{}, err
	}
	return *resp.Status, nil
}

// Detach detaches dir and stops its serving process. Not attached is
// success; a dead server's leftovers are cleaned up. A mounted device is
// refused with ErrBusy (the server keeps serving).
func (c *Client) Detach(ctx context.Context, dir string) error {
	abs, rt, err := c.paths(dir)
	if err != nil {
		return err
	}
	_, err = call(ctx, rt, request{Op: opDetach})
	if errors.Is(err, ErrNotAttached) {
		return cleanup(ctx, c.opts.RunDir, abs, c.opts.Logger)
	}
	return err
}

// Snapshot takes an online snapshot of attached dir (see Serve); new writes
// go to newDeltaFile ("" = the image's default name). Returns the frozen
// GUID.
func (c *Client) Snapshot(ctx context.Context, dir, newDeltaFile string) (string, error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return "", err
	}
	resp, err := call(ctx, rt, request{Op: opSnapshot, NewDeltaFile: newDeltaFile})
	if err != nil {
		return "", err
	}
	return resp.GUID, nil
}

// Grow grows attached dir to size bytes and the loop device with it.
func (c *Client) Grow(ctx context.Context, dir string, size int64) error {
	_, rt, err := c.paths(dir)
	if err != nil {
		return err
	}
	_, err = call(ctx, rt, request{Op: opGrow, Size: size})
	return err
}

// Cleanup removes what a dead serving process of dir left (loop device,
// FUSE mount, runtime directory). It refuses while a server answers
// (ErrAlreadyAttached) or the image is locked (ErrLocked). A loop device
// still mounted is left to the kernel (freed on unmount): ErrBusy.
func (c *Client) Cleanup(ctx context.Context, dir string) error {
	abs, _, err := c.paths(dir)
	if err != nil {
		return err
	}
	return cleanup(ctx, c.opts.RunDir, abs, c.opts.Logger)
}

func (c *Client) paths(dir string) (abs, rt string, err error) {
	abs, err = absDir(dir)
	if err != nil {
		return "", "", err
	}
	return abs, runtimeDir(c.opts.RunDir, abs), nil
}
