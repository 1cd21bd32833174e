// Package attach serves an image directory as a block device: one serving
// process per attached image holds the image (and its lock), a FUSE mount
// exposing the virtual disk as a flat file (pkg/blockmap) and a loop device
// on that file (pkg/loopdev). It answers a control socket (status,
// snapshot, grow, detach), so that online snapshots and growth go through
// the only process that may touch the chain, and so that the CSI process
// can restart without cutting the I/O of mounted volumes.
//
// Server side: Serve (run by "csi-ploop image attach DIR").
// Client side: Client (Attach starts the serving process if needed), and
// the package-level helpers that use DefaultRunDir.
//
// Every serving process keeps its state in a runtime directory
// RunDir/<sha256(abs image dir)[:16]>/: the control socket, the FUSE mount
// point, the log of a detached server and the pending-allocation journal
// of the image (kept by a cleanup while the image exists: the next server
// replays it; see openImage). A runtime directory whose socket
// does not answer while the image lock is free is stale (the server died);
// Cleanup removes it together with its loop device and FUSE mount.
package attach

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// Defaults.
const (
	// DefaultRunDir holds one runtime directory per attached image.
	DefaultRunDir = "/run/csi-ploop"
	// DefaultRequestTimeout bounds one disk request of the FUSE server
	// before the connection is aborted (I/O fails instead of hanging).
	DefaultRequestTimeout = 60 * time.Second
	// DefaultBinary is run by Client.Attach when AttachOptions.Binary is empty.
	DefaultBinary = "csi-ploop"
	// CPUProfileEnv names a file: when set, Serve writes a CPU profile of
	// the serving process there (written on exit).
	CPUProfileEnv = "CSI_PLOOP_CPUPROFILE"
)

// Names inside a runtime directory (kept short: unix socket paths are
// limited to 107 bytes).
const (
	socketName = "ctl.sock"
	mountName  = "mnt"
	logName    = "serve.log"
	// journalName is the image's pending-allocation journal
	// (image.PendingJournal): it outlives a serving process that dies, so
	// that the next one keeps the writes that process acknowledged.
	journalName = "pending-alloc"
)

// Sentinel errors.
var (
	// ErrNotAttached: no serving process answers for the image directory.
	ErrNotAttached = errors.New("attach: image is not attached")
	// ErrAlreadyAttached: another process already serves the image.
	ErrAlreadyAttached = errors.New("attach: image is already attached")
	// ErrBusy: detach refused because the device is still in use
	// (mounted or open); the server keeps serving.
	ErrBusy = errors.New("attach: device is in use")
	// ErrLocked: the image is locked by a process that does not answer the
	// control socket (starting up, hung, or not a serving process).
	ErrLocked = errors.New("attach: image is locked by a process that does not answer")
	// ErrStartFailed: the serving process exited or never answered.
	ErrStartFailed = errors.New("attach: serving process failed to start")
	// ErrAborted: the FUSE connection was aborted (a disk request hung);
	// the device returns I/O errors and the server shuts down.
	ErrAborted = errors.New("attach: FUSE connection aborted")
	// ErrInvalid: a malformed request or argument.
	ErrInvalid = errors.New("attach: invalid argument")
	// ErrResourceExhausted: a limit of the image was reached (a snapshot
	// of a chain already as deep as ploop allows).
	ErrResourceExhausted = errors.New("attach: image limit reached")
	// ErrNotFound: a file the operation needs does not exist.
	ErrNotFound = errors.New("attach: not found")
	// ErrCorrupt: the image is corrupt (image check tells what is wrong).
	ErrCorrupt = errors.New("attach: image is corrupt")
	// ErrVolumeFailed: a sync of a delta failed, so data or BAT entries
	// written before it may be lost; every later write, flush and snapshot
	// fails until the image is detached, checked and attached again.
	ErrVolumeFailed = errors.New("attach: volume failed")
	// ErrKept: a keep request found the server kept by another keeper.
	ErrKept = errors.New("attach: the serving process has a keeper")
)

// Status describes an attached image.
type Status struct {
	Device string `json:"device"` // /dev/loopN
	PID    int    `json:"pid"`    // of the serving process
	Dir    string `json:"dir"`    // absolute image directory
	Depth  int    `json:"depth"`  // deltas in the chain
	Size   int64  `json:"size"`   // virtual size in bytes
	// Failure is set once the volume failed (ErrVolumeFailed): why.
	Failure string `json:"failure,omitempty"`
	// Binary identifies the server's executable (BinaryID); empty from
	// servers before protocol version 2.
	Binary string `json:"binary,omitempty"`
	// Kept: a keeper (the data-plane supervisor) holds the server's
	// descriptors and restarts it if it dies.
	Kept bool `json:"kept,omitempty"`
	// Merge is the merge running now, nil if none (protocol 3).
	Merge *MergeStatus `json:"merge,omitempty"`
	// Protocol is the server's control protocol version (filled in by
	// the client from the response).
	Protocol int `json:"-"`
}

// runtimeDir returns the runtime directory of the image directory dir
// (already absolute) under base.
func runtimeDir(base, dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(base, hex.EncodeToString(sum[:])[:16])
}

// absDir makes dir absolute and resolves symlinks, so that every spelling
// of a directory maps to the same runtime directory.
func absDir(dir string) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("%w: empty image directory", ErrInvalid)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("attach: %s: %w", dir, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real, nil
	}
	return abs, nil
}
