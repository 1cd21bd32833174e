package volume

import "errors"

// Sentinel errors. They are always wrapped with %w and checked with errors.Is; the
// driver maps each one to a single gRPC code.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalid            = errors.New("invalid argument")
	ErrOutOfRange         = errors.New("out of range")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrBusy               = errors.New("operation in progress")
	// ErrResourceExhausted: a limit of the storage was reached (e.g. the
	// snapshot chain of a volume is as deep as ploop allows).
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrBadToken: a pagination token this manager did not produce (CSI: ABORTED).
	ErrBadToken = errors.New("invalid pagination token")
	// ErrCorrupt: the volume's image is corrupt, e.g. its descriptor names
	// a delta file outside the storage root. Nothing attaches, snapshots or
	// grows it; an operator checks it (csi-ploop image check).
	ErrCorrupt = errors.New("corrupt volume")
	// ErrVolumeFailed: the volume's data path failed (a sync of a delta
	// failed, or its FUSE connection was aborted): writes may have been
	// lost, and everything but teardown fails until it is staged again.
	ErrVolumeFailed = errors.New("volume failed")
)
