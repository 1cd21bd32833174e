package dataplane

import (
	"context"
	"errors"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// Client talks to the supervisor on its socket. It is the attach.Launcher
// of a driver run with --dataplane-socket: serving processes are started by
// the supervisor, in its process tree and cgroup, never the driver's.
type Client struct {
	socket string
	wait   time.Duration
}

var _ attach.Launcher = (*Client)(nil)

// DefaultClientWait bounds how long a Client waits for a supervisor that
// does not answer (not started yet, or a rolling update between two).
const DefaultClientWait = 30 * time.Second

// NewClient returns a client of the supervisor on socket. wait bounds how
// long an attach or cleanup waits for a supervisor to answer (0 =
// DefaultClientWait; the call's ctx bounds it too).
func NewClient(socket string, wait time.Duration) *Client {
	if wait <= 0 {
		wait = DefaultClientWait
	}
	return &Client{socket: socket, wait: wait}
}

// Launch implements attach.Launcher: the supervisor starts (or finds) the
// serving process of dir and answers its device.
func (c *Client) Launch(ctx context.Context, dir string) (string, error) {
	resp, err := c.retrying(ctx, request{Op: opAttach, Dir: dir})
	return resp.Device, err
}

// Cleanup implements attach.Launcher: the supervisor removes what a dead
// server of dir left, in its own mount namespace, where the FUSE mount is,
// and in step with the restarts it runs.
func (c *Client) Cleanup(ctx context.Context, dir string) error {
	_, err := c.retrying(ctx, request{Op: opCleanup, Dir: dir})
	return err
}

// retrying calls the supervisor, waiting while none answers or the one
// that answers is retiring (a rolling update hands the socket over).
func (c *Client) retrying(ctx context.Context, req request) (response, error) {
	deadline := time.Now().Add(c.wait)
	for {
		resp, err := call(ctx, c.socket, req)
		if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrRetired) {
			return resp, err
		}
		if time.Now().After(deadline) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return resp, errors.Join(err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Status asks the supervisor about itself and its volumes.
func (c *Client) Status(ctx context.Context) (Status, error) {
	resp, err := call(ctx, c.socket, request{Op: opStatus})
	if err != nil {
		return Status{}, err
	}
	return *resp.Status, nil
}

// Handover hands the volume of dir to a new serving process (the
// supervisor's binary) without an I/O error; it returns the new server's
// pid.
func (c *Client) Handover(ctx context.Context, dir string) (int, error) {
	resp, err := c.retrying(ctx, request{Op: opHandover, Dir: dir})
	return resp.PID, err
}

// Retire asks the supervisor to stop taking volumes: the caller (a newer
// supervisor, generation gen) takes its socket and its volumes over.
func (c *Client) Retire(ctx context.Context, gen int64) (Status, error) {
	resp, err := call(ctx, c.socket, request{Op: opRetire, Generation: gen})
	if err != nil {
		return Status{}, err
	}
	return *resp.Status, nil
}

// Stop makes the supervisor exit; its serving processes keep running (the
// next supervisor adopts them). It returns the supervisor's pid.
func (c *Client) Stop(ctx context.Context) (int, error) {
	resp, err := call(ctx, c.socket, request{Op: opStop})
	return resp.PID, err
}
