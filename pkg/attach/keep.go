package attach

import (
	"encoding/json"
	"os"
)

// A keeper (the data-plane supervisor, pkg/dataplane) holds duplicates of a
// serving process's descriptors, so that the volume's FUSE connection, and
// the control socket clients talk to, outlive that process: when it dies,
// the keeper starts a successor on the same connection, which asks the
// kernel to re-send the requests the dead one had taken. The keeper and
// the server talk over a keep channel: a unix stream connection carrying
// KeepMsg values (unixsock.MsgConn) with descriptors attached. A child
// inherits its end (image attach --keeper-fd); a server a keeper did not
// start is kept through the control socket ("keep" op), and the connection
// of that request becomes the keep channel.
//
// Descriptors travel in the order of KeepFiles: the /dev/fuse descriptor of
// the connection, an O_PATH descriptor of the mount's root, the listening
// control socket. With them a server needs no path to its mount: a
// successor in another mount namespace (a new data-plane pod) serves the
// same connection, and clients connecting while the server is replaced
// wait in the listener's backlog instead of finding no server.

// Keep channel operations (KeepMsg.Op).
const (
	// keeper -> server
	KeepStart = "start" // first message to a child: Mode, State, files
	KeepGo    = "go"    // a standby successor may start serving now
	KeepDrain = "drain" // hand-over: stop serving, release the image, exit
	KeepStop  = "stop"  // a standby successor exits without touching anything

	// server -> keeper
	KeepStandby     = "standby"      // a successor is up, waiting for go
	KeepReady       = "ready"        // serving: State, files (the control listener)
	KeepBye         = "bye"          // leaving for Reason; do not restart it
	KeepReleased    = "released"     // drained and released: start the successor
	KeepDrainFailed = "drain-failed" // the hand-over was refused; still serving
)

// Start modes (KeepMsg.Mode of KeepStart).
const (
	// ModeFresh: attach the image from scratch (mount FUSE, answer INIT,
	// attach a loop device) and report the descriptors in ready.
	ModeFresh = "fresh"
	// ModeAdopt: serve the connection whose descriptors came with start,
	// initialised already (State.Init), on the loop device State.Device.
	ModeAdopt = "adopt"
)

// Reasons of KeepBye.
const (
	ByeDetached    = "detached"     // torn down on request: nothing left to keep
	ByeAborted     = "aborted"      // the FUSE connection is dead (watchdog, fusectl)
	ByeFailed      = "failed"       // the start failed; Error says why
	ByeHandingOver = "handing-over" // another keeper takes the server over
)

// KeepMsg is one message on a keep channel.
type KeepMsg struct {
	Op      string     `json:"op"`
	Mode    string     `json:"mode,omitempty"`
	Standby bool       `json:"standby,omitempty"`
	Resend  bool       `json:"resend,omitempty"` // adopt: FUSE_NOTIFY_RESEND before serving
	State   *KeepState `json:"state,omitempty"`
	Reason  string     `json:"reason,omitempty"`
	Error   string     `json:"error,omitempty"`
}

// KeepState is what a keeper knows of a served volume besides its files.
type KeepState struct {
	Dir    string `json:"dir"`              // absolute image directory
	Device string `json:"device,omitempty"` // /dev/loopN
	// Init is the FUSE connection's INIT result (the kernel sends INIT once
	// per connection, so a successor must be given it).
	Init json.RawMessage `json:"init,omitempty"`
	// CanResend: the kernel re-sends taken requests to a successor
	// (FUSE_NOTIFY_RESEND, Linux 6.9). Without it a crash cannot be
	// recovered without I/O errors.
	CanResend bool `json:"canResend"`
	// Binary identifies the server's executable (BinaryID).
	Binary string `json:"binary,omitempty"`
	PID    int    `json:"pid,omitempty"`
}

// KeepFiles are the descriptors that travel with a kept volume. Nil entries
// are allowed where a message does not carry one.
type KeepFiles struct {
	Dev  *os.File // /dev/fuse of the connection
	Root *os.File // O_PATH of the mount's root directory
	Ctl  *os.File // the listening control socket
}

// List returns the files in wire order, nil entries dropped at the end
// only (the order is the meaning).
func (k KeepFiles) List() []*os.File {
	l := []*os.File{k.Dev, k.Root, k.Ctl}
	for len(l) > 0 && l[len(l)-1] == nil {
		l = l[:len(l)-1]
	}
	return l
}

// KeepFilesOf takes received files in wire order. Extra files are closed.
func KeepFilesOf(files []*os.File) KeepFiles {
	var k KeepFiles
	for i, f := range files {
		switch i {
		case 0:
			k.Dev = f
		case 1:
			k.Root = f
		case 2:
			k.Ctl = f
		default:
			f.Close()
		}
	}
	return k
}

// Close closes the files that are set.
func (k KeepFiles) Close() {
	for _, f := range []*os.File{k.Dev, k.Root, k.Ctl} {
		if f != nil {
			f.Close()
		}
	}
}
