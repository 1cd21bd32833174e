package unixsock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrNoListener: nothing listens at the socket path (no file, or a file
// nobody accepts on any more).
var ErrNoListener = errors.New("unixsock: nothing listens")

// RoundTrip sends req as one JSON value to the unix socket at path and
// decodes one JSON value of the answer into resp: the shape of the
// control sockets of the serving processes and of the data plane. ctx
// bounds the whole exchange; when it ends, its error is returned.
func RoundTrip(ctx context.Context, path string, req, resp any) error {
	conn, err := Dial(ctx, path)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("send: %w", CtxErr(ctx, err))
	}
	if err := json.NewDecoder(conn).Decode(resp); err != nil {
		return fmt.Errorf("no answer: %w", CtxErr(ctx, err))
	}
	return nil
}

// Dial connects to the unix socket at path within ctx. Nothing listening
// there (no file, or a file nobody accepts on) is ErrNoListener; a dial
// that ctx ended is ctx's error (CtxErr).
func Dial(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: %s: %w", ErrNoListener, path, err)
		}
		return nil, fmt.Errorf("connect %s: %w", path, CtxErr(ctx, err))
	}
	return conn.(*net.UnixConn), nil
}

// CtxErr prefers ctx's error (the reason a deadline hit the connection).
// The dialer and the connection use ctx's deadline as their own, and can
// time out a moment before ctx's timer marks it done: a timeout at or past
// that deadline is ctx's too, or callers that tell "ctx ended" from "the
// peer failed" by ctx.Err() would take it for a failure of the peer.
func CtxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if d, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// CtxEnded reports whether err is ctx's end rather than a failure of the
// peer: ctx is done, or err is a timeout on ctx's deadline that CtxErr
// gave ctx's error before ctx's timer marked it done.
func CtxEnded(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded)
}
