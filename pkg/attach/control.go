package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// ProtocolVersion is the version of the control protocol this package
// speaks: one JSON request per connection, one JSON response, each with a
// version field "v". Version 0 (no "v") is the protocol before versioning:
// the same operations, the codes busy, invalid, aborted, gone and failed.
// Version 1 adds the version field, Status.Failure and the codes
// resource-exhausted, locked, not-found, corrupt and volume-failed.
// Version 2 adds the operations keep and handover (after their response,
// with descriptors attached, the connection becomes a keep channel; see
// keep.go), the code kept, Status.Binary and Status.Kept, and snapshot's
// fsFrozen (the client froze the filesystem itself: a server in another
// mount namespace cannot see it). A peer ignores fields it does not know
// and maps codes it does not know to a plain error, so old clients and
// servers keep working with new ones (serving processes outlive driver
// upgrades). A server refuses a request of a newer version than its own
// with code invalid, so a client sends the lowest version that has the
// operation it asks for (opVersion): servers of an older version keep
// answering everything they know.
// Version 3 adds the operation merge (answered with Merge), Status.Merge
// and the code merging.
const ProtocolVersion = 3

// opVersion is the protocol version a request of op is sent with: the
// first version that has op.
func opVersion(op string) int {
	if op == opMerge {
		return 3
	}
	return 2
}

// Operations.
const (
	opStatus   = "status"
	opSnapshot = "snapshot"
	opGrow     = "grow"
	opDetach   = "detach"
	opKeep     = "keep"     // become the keeper of a server that has none
	opHandover = "handover" // become its keeper whoever kept it, to hand it over
	opMerge    = "merge"    // merge two adjacent deltas of the chain (merge.go)
)

// Error codes carried in responses: stable strings, part of the protocol.
const (
	codeBusy              = "busy"
	codeInvalid           = "invalid"
	codeAborted           = "aborted"
	codeGone              = "gone" // tearing down: the client treats it as not attached
	codeResourceExhausted = "resource-exhausted"
	codeLocked            = "locked"
	codeNotFound          = "not-found"
	codeCorrupt           = "corrupt"
	codeVolumeFailed      = "volume-failed"
	codeKept              = "kept"    // keep: another keeper holds the server
	codeMerging           = "merging" // a merge runs: one at a time, no snapshot or grow meanwhile
	codeFailed            = "failed"  // anything else
)

// errorCodes maps each code to its sentinel, in the order errResponse
// tests them: the first sentinel an error matches gives its code. A failed
// volume comes first: every operation on it fails for that reason.
var errorCodes = []struct {
	code     string
	sentinel error
}{
	{codeVolumeFailed, ErrVolumeFailed},
	{codeGone, ErrNotAttached},
	{codeAborted, ErrAborted},
	{codeBusy, ErrBusy},
	{codeLocked, ErrLocked},
	{codeResourceExhausted, ErrResourceExhausted},
	{codeCorrupt, ErrCorrupt},
	{codeNotFound, ErrNotFound},
	{codeKept, ErrKept},
	{codeMerging, ErrMerging},
	{codeAlreadyAttached, ErrAlreadyAttached},
	{codeStartFailed, ErrStartFailed},
	{codeInvalid, ErrInvalid},
}

// Codes only the data-plane supervisor answers with (pkg/dataplane carries
// this package's errors over its own socket with the same codes).
const (
	codeAlreadyAttached = "already-attached"
	codeStartFailed     = "start-failed"
)

// ErrorCode is the protocol code of err: the code of the first sentinel of
// this package it matches, "failed" for anything else.
func ErrorCode(err error) string { return errResponse(err).Code }

// CodedError is the error a peer answered with code and message msg: its
// message is msg, and it matches the sentinel of code (none for "failed"
// and codes this package does not know).
func CodedError(code, msg string) error {
	return remoteError(response{Code: code, Error: msg})
}

type request struct {
	Version      int    `json:"v,omitempty"`
	Op           string `json:"op"`
	NewDeltaFile string `json:"newDeltaFile,omitempty"`
	Size         int64  `json:"size,omitempty"`
	// FsFrozen (snapshot): the client froze the filesystem on the device.
	FsFrozen bool `json:"fsFrozen,omitempty"`
	// Keeper (keep, handover): who asks, for the server's log.
	Keeper string `json:"keeper,omitempty"`
	// Parent, Child (merge): absolute paths of two adjacent deltas of the
	// served chain; Direction: "" (the cheaper), "down" or "up".
	Parent    string `json:"parent,omitempty"`
	Child     string `json:"child,omitempty"`
	Direction string `json:"direction,omitempty"`
}

type response struct {
	Version int     `json:"v,omitempty"`
	OK      bool    `json:"ok"`
	Error   string  `json:"error,omitempty"`
	Code    string  `json:"code,omitempty"`
	Status  *Status `json:"status,omitempty"`
	GUID    string  `json:"guid,omitempty"`
	// Keep (keep, handover): the kept volume; its files come attached.
	Keep *KeepState `json:"keep,omitempty"`
	// Merge (merge): what the merge did.
	Merge *MergeResult `json:"merge,omitempty"`
}

// typed gives an error from pkg/image or the file system the attach
// sentinel that carries its meaning across the socket.
func typed(err error) error {
	for _, m := range []struct{ from, to error }{
		{image.ErrChainTooDeep, ErrResourceExhausted},
		{image.ErrBusy, ErrLocked},
		{image.ErrCorrupt, ErrCorrupt},
		{image.ErrInvalid, ErrInvalid},
		{fs.ErrNotExist, ErrNotFound},
	} {
		if errors.Is(err, m.from) && !errors.Is(err, m.to) {
			return fmt.Errorf("%w: %w", m.to, err)
		}
	}
	return err
}

// errResponse encodes err with the code of the first sentinel it matches.
func errResponse(err error) response {
	err = typed(err)
	code := codeFailed
	for _, c := range errorCodes {
		if errors.Is(err, c.sentinel) {
			code = c.code
			break
		}
	}
	return response{Version: ProtocolVersion, Error: err.Error(), Code: code}
}

// remoteErr is an error a serving process answered: its message is the
// server's, unchanged, and it matches the sentinel of its code.
type remoteErr struct {
	msg      string
	sentinel error // nil for codeFailed and codes this client does not know
}

func (e *remoteErr) Error() string { return e.msg }
func (e *remoteErr) Unwrap() error { return e.sentinel }

// RemoteError is an error a peer answered: its message is msg, unchanged,
// and it matches sentinel (none when nil). pkg/dataplane uses it for its
// own codes.
func RemoteError(msg string, sentinel error) error { return &remoteErr{msg: msg, sentinel: sentinel} }

// remoteError turns an error response back into an error matching the
// sentinel it was made from.
func remoteError(r response) error {
	e := &remoteErr{msg: r.Error}
	if e.msg == "" {
		e.msg = "attach: the serving process failed without a message (code " + r.Code + ")"
	}
	for _, c := range errorCodes {
		if c.code == r.Code {
			e.sentinel = c.sentinel
		}
	}
	return e
}

// call sends req to the serving process of runtime directory rt. A missing
// socket or a refused connection mean no server: ErrNotAttached.
func call(ctx context.Context, rt string, req request) (response, error) {
	req.Version = opVersion(req.Op)
	var resp response
	err := unixsock.RoundTrip(ctx, filepath.Join(rt, socketName), req, &resp)
	if errors.Is(err, unixsock.ErrNoListener) {
		return response{}, fmt.Errorf("%w: %s: %w", ErrNotAttached, rt, err)
	}
	if err != nil {
		return response{}, fmt.Errorf("attach: %s %s: %w", req.Op, rt, err)
	}
	if !resp.OK {
		return resp, remoteError(resp)
	}
	return resp, nil
}

// serveConn answers one request on conn with handle.
func serveConn(conn net.Conn, handle func(request) (response, func())) {
	defer conn.Close()
	req, resp, ok := readRequest(conn)
	after := func() {}
	if ok {
		resp, after = handle(req)
	}
	writeResponse(conn, resp, after)
}

// readRequest reads the request of a control connection. ok is false when
// it is unusable: resp is then the error to answer.
func readRequest(conn net.Conn) (req request, resp response, ok bool) {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		return req, errResponse(fmt.Errorf("%w: bad request: %w", ErrInvalid, err)), false
	}
	if req.Version > ProtocolVersion {
		return req, errResponse(fmt.Errorf("%w: protocol version %d is newer than this server's %d",
			ErrInvalid, req.Version, ProtocolVersion)), false
	}
	return req, response{}, true
}

// writeResponse answers and then runs after (if not nil).
func writeResponse(conn net.Conn, resp response, after func()) {
	resp.Version = ProtocolVersion
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	json.NewEncoder(conn).Encode(resp)
	if after != nil {
		after()
	}
}
