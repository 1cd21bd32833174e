package dataplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// ProtocolVersion of the supervisor's socket: one JSON request per
// connection, one JSON response, each with a version field "v", shaped
// like the per-volume control protocol (pkg/attach): errors carry stable
// codes, pkg/attach's codes for what a serving process reported and the
// codes below for the supervisor's own conditions; a peer ignores fields it
// does not know and maps codes it does not know to a plain error; a request
// newer than the supervisor is refused as invalid.
const ProtocolVersion = 1

// Operations.
const (
	opStatus   = "status"   // the supervisor and its volumes
	opAttach   = "attach"   // start (or find) the server of dir; answers its device
	opCleanup  = "cleanup"  // remove what a dead server of dir left
	opHandover = "handover" // hand dir over to a new serving process
	opRetire   = "retire"   // a newer supervisor takes the socket over
	opStop     = "stop"     // exit, leaving the servers running
)

// Codes of the supervisor's own errors.
const (
	codeRetired    = "retired"
	codeSuperseded = "superseded"
)

// Sentinel errors.
var (
	// ErrUnavailable: no supervisor answers on the socket.
	ErrUnavailable = errors.New("dataplane: no supervisor answers")
	// ErrRetired: the supervisor hands its volumes to a newer one and
	// takes no new ones; ask again (the socket is the newer one's soon).
	ErrRetired = errors.New("dataplane: supervisor retired")
	// ErrSuperseded: a retire request from a supervisor of an older
	// generation than the one answering (a restarted old pod).
	ErrSuperseded = errors.New("dataplane: a newer supervisor runs")
)

type request struct {
	Version    int    `json:"v"`
	Op         string `json:"op"`
	Dir        string `json:"dir,omitempty"`
	Generation int64  `json:"generation,omitempty"`
}

type response struct {
	Version int     `json:"v"`
	OK      bool    `json:"ok"`
	Error   string  `json:"error,omitempty"`
	Code    string  `json:"code,omitempty"`
	Device  string  `json:"device,omitempty"`
	PID     int     `json:"pid,omitempty"`
	Status  *Status `json:"status,omitempty"`
}

// Status describes a supervisor.
type Status struct {
	PID        int    `json:"pid"`
	Binary     string `json:"binary"` // attach.BinaryID of the supervisor
	Generation int64  `json:"generation"`
	RunDir     string `json:"runDir"`
	// Ready: every serving process found at the start is kept (adopted or
	// handed over); a DaemonSet's rolling update waits for it.
	Ready   bool           `json:"ready"`
	Retired bool           `json:"retired"`
	Volumes []VolumeStatus `json:"volumes"`
}

// VolumeStatus describes a volume a supervisor keeps.
type VolumeStatus struct {
	Dir    string `json:"dir"`
	Device string `json:"device,omitempty"`
	PID    int    `json:"pid,omitempty"` // of the serving process
	// State: starting, serving, restarting, handing-over.
	State     string `json:"state"`
	Restarts  int    `json:"restarts"`
	CanResend bool   `json:"canResend"`
	Binary    string `json:"binary,omitempty"`
}

// errorCodes are the supervisor's own codes; anything else is coded by
// pkg/attach.
var errorCodes = []struct {
	code     string
	sentinel error
}{
	{codeRetired, ErrRetired},
	{codeSuperseded, ErrSuperseded},
}

func errResponse(err error) response {
	for _, c := range errorCodes {
		if errors.Is(err, c.sentinel) {
			return response{Version: ProtocolVersion, Error: err.Error(), Code: c.code}
		}
	}
	return response{Version: ProtocolVersion, Error: err.Error(), Code: attach.ErrorCode(err)}
}

func remoteError(r response) error {
	msg := r.Error
	if msg == "" {
		msg = "dataplane: the supervisor failed without a message (code " + r.Code + ")"
	}
	for _, c := range errorCodes {
		if c.code == r.Code {
			return attach.RemoteError(msg, c.sentinel)
		}
	}
	return attach.CodedError(r.Code, msg)
}

// call sends req to the supervisor on socket. No supervisor: ErrUnavailable.
func call(ctx context.Context, socket string, req request) (response, error) {
	req.Version = ProtocolVersion
	var resp response
	err := unixsock.RoundTrip(ctx, socket, req, &resp)
	if errors.Is(err, unixsock.ErrNoListener) {
		return response{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return response{}, fmt.Errorf("dataplane: %s: %w", req.Op, err)
	}
	if !resp.OK {
		return resp, remoteError(resp)
	}
	return resp, nil
}
