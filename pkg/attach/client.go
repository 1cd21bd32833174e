package attach

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
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
	// Launcher starts serving processes; nil = a Spawner made of these
	// options (Binary, RunDir, Env, Logger).
	Launcher Launcher
}

func (o AttachOptions) withDefaults() AttachOptions {
	o.Binary = cmp.Or(o.Binary, DefaultBinary)
	o.RunDir = cmp.Or(o.RunDir, DefaultRunDir)
	o.Logger = defaultLogger(o.Logger)
	return o
}

// Client attaches and controls images through their serving processes. It
// implements volume.Attacher. Safe for concurrent use on different images;
// the caller serializes operations on one image.
type Client struct {
	opts     AttachOptions
	launcher Launcher
}

// NewClient returns a Client.
func NewClient(opts AttachOptions) *Client {
	opts = opts.withDefaults()
	l := opts.Launcher
	if l == nil {
		l = NewSpawner(opts)
	}
	return &Client{opts: opts, launcher: l}
}

// probeTimeout bounds the status probe of a possibly hung server.
const probeTimeout = 5 * time.Second

// pollEvery is how often Attach asks a starting server for its device.
const pollEvery = 20 * time.Millisecond

// Attach returns the device of the attached image dir: the device of the
// server that answers for it, or else the one the Launcher starts (after
// cleaning up what a dead server left). ctx bounds the wait. A start that
// fails or does not finish within ctx is undone by the Launcher.
func (c *Client) Attach(ctx context.Context, dir string) (string, error) {
	abs, rt, err := c.paths(dir)
	if err != nil {
		return "", err
	}
	if dev, ok, err := attachedAt(ctx, rt); err != nil || ok {
		return dev, err
	}
	return c.launcher.Launch(ctx, abs)
}

// attachedAt asks the server of runtime directory rt for its device: ok
// is false when no server answers.
func attachedAt(ctx context.Context, rt string) (string, bool, error) {
	st, err := StatusAt(ctx, rt)
	if errors.Is(err, ErrNotAttached) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return st.Device, true, nil
}

// Attached reports the device of dir if a server answers for it.
func (c *Client) Attached(ctx context.Context, dir string) (string, bool, error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return "", false, err
	}
	return attachedAt(ctx, rt)
}

// Status asks the serving process of dir; ErrNotAttached if none answers.
func (c *Client) Status(ctx context.Context, dir string) (Status, error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return Status{}, err
	}
	return StatusAt(ctx, rt)
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
		return c.launcher.Cleanup(ctx, abs)
	}
	return err
}

// Snapshot takes an online snapshot of attached dir (see Serve); new writes
// go to newDeltaFile ("" = the image's default name). Returns the frozen
// GUID. A filesystem mounted from the device is frozen (FIFREEZE) here, in
// the caller's mount namespace, where the driver's staging mount is: the
// serving process may run in another one (the data plane's container)
// and not see it. Servers before protocol version 2 freeze it themselves.
func (c *Client) Snapshot(ctx context.Context, dir, newDeltaFile string) (guid string, err error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return "", err
	}
	st, err := c.Status(ctx, dir)
	if err != nil {
		return "", err
	}
	req := request{Op: opSnapshot, NewDeltaFile: newDeltaFile}
	if st.Protocol >= 2 {
		fs, err := freezeAll(st.Device)
		if err != nil {
			return "", err
		}
		defer func() { err = errors.Join(err, thawAll(fs)) }()
		req.FsFrozen = true
	}
	resp, err := call(ctx, rt, req)
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
	return c.launcher.Cleanup(ctx, abs)
}

func (c *Client) paths(dir string) (abs, rt string, err error) {
	abs, err = absDir(dir)
	if err != nil {
		return "", "", err
	}
	return abs, runtimeDir(c.opts.RunDir, abs), nil
}
