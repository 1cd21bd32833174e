package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Control protocol: one JSON request per connection, one JSON response.
const (
	opStatus   = "status"
	opSnapshot = "snapshot"
	opGrow     = "grow"
	opDetach   = "detach"
)

// Error codes carried in responses, mapped back to sentinels by the client.
const (
	codeBusy    = "busy"
	codeInvalid = "invalid"
	codeAborted = "aborted"
	codeFailed  = "failed"
	// codeGone: the server is tearing down (its loop device is gone); the
	// client treats it as not attached and starts a new one.
	codeGone = "gone"
)

type request struct {
	Op           string `json:"op"`
	NewDeltaFile string `json:"newDeltaFile,omitempty"`
	Size         int64  `json:"size,omitempty"`
}

type response struct {
	OK     bool    `json:"ok"`
	Error  string  `json:"error,omitempty"`
	Code   string  `json:"code,omitempty"`
	Status *Status `json:"status,omitempty"`
	GUID   string  `json:"guid,omitempty"`
}

// errResponse encodes err with the code of its sentinel.
func errResponse(err error) response {
	code := codeFailed
	switch {
	case errors.Is(err, ErrBusy):
		code = codeBusy
	case errors.Is(err, ErrInvalid):
		code = codeInvalid
	case errors.Is(err, ErrAborted):
		code = codeAborted
	case errors.Is(err, ErrNotAttached):
		code = codeGone
	}
	return response{Error: err.Error(), Code: code}
}

// remoteError turns an error response back into an error matching the
// sentinel it was made from.
func remoteError(r response) error {
	var sentinel error
	switch r.Code {
	case codeBusy:
		sentinel = ErrBusy
	case codeInvalid:
		sentinel = ErrInvalid
	case codeAborted:
		sentinel = ErrAborted
	case codeGone:
		sentinel = ErrNotAttached
	default:
		return fmt.Errorf("attach: server: %s", r.Error)
	}
	// The server's message starts with the sentinel's own text.
	return fmt.Errorf("%w%s", sentinel, strings.TrimPrefix(r.Error, sentinel.Error()))
}

// call sends req to the serving process of runtime directory rt. A missing
// socket or a refused connection mean no server: ErrNotAttached.
func call(ctx context.Context, rt string, req request) (response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(rt, socketName))
	if err != nil {
		if noServer(err) {
			return response{}, fmt.Errorf("%w: %s: %w", ErrNotAttached, rt, err)
		}
		return response{}, fmt.Errorf("attach: connect %s: %w", rt, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var resp response
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return response{}, fmt.Errorf("attach: send %s: %w", req.Op, ctxOr(ctx, err))
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return response{}, fmt.Errorf("attach: %s: no answer: %w", req.Op, ctxOr(ctx, err))
	}
	if !resp.OK {
		return resp, remoteError(resp)
	}
	return resp, nil
}

// ctxOr prefers ctx's error (the reason a deadline hit the connection).
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func noServer(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ENOENT)
}

// serveConn answers one request on conn with handle.
func serveConn(conn net.Conn, handle func(request) (response, func())) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req request
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		json.NewEncoder(conn).Encode(errResponse(fmt.Errorf("%w: bad request: %w", ErrInvalid, err)))
		return
	}
	conn.SetReadDeadline(time.Time{})
	resp, after := handle(req)
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	json.NewEncoder(conn).Encode(resp)
	if after != nil {
		after()
	}
}
