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
	opts.Binary = orDefault(opts.Binary, DefaultBinary)
	opts.RunDir = orDefault(opts.RunDir, DefaultRunDir)
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
// runs, after cleaning up what a dead one left. ctx bounds the wait.
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
	exited, err := c.spawn(abs, rt)
	if err != nil {
		return "", err
	}
	return c.waitReady(ctx, rt, exited)
}

// spawn starts the serving process in its own session, logging to the
// runtime directory. exited is closed when it exits.
func (c *Client) spawn(dir, rt string) (exited <-chan struct{}, err error) {
	logf, err := os.OpenFile(filepath.Join(rt, logName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("attach: log file: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(c.opts.Binary, "image", "attach", "--foreground=false", "--run-dir", c.opts.RunDir, dir)
	cmd.Env = append(os.Environ(), c.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrStartFailed, c.opts.Binary, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // reap it whenever it ends
	return done, nil
}

// waitReady polls the socket until the server reports its device, the
// server exits, or ctx ends (then the server is told to stop).
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
			return "", fmt.Errorf("%w: it exited; log: %s", ErrStartFailed, logTail(rt))
		case <-ctx.Done():
			return "", fmt.Errorf("%w: no answer: %w; log: %s", ErrStartFailed, ctx.Err(), logTail(rt))
		case <-t.C:
		}
	}
}

// logTail returns the end of a serving process's log.
func logTail(rt string) string {
	b, err := os.ReadFile(filepath.Join(rt, logName))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

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
