package volume

import (
	"context"
	"time"
)

// CreateOptions mirrors image.CreateOptions so this package does not depend on the
// ploop format code; the adapter in the cmd copies the fields.
type CreateOptions struct {
	ClusterSize int64  // 0 = 1 MiB
	DeltaFile   string // the new writable top; we always pass an absolute pool path
}

// SnapshotOptions mirrors image.SnapshotOptions.
type SnapshotOptions struct {
	NewDeltaFile string // the new writable top; we always pass an absolute pool path
}

// ImageStore is the offline ploop image directory API of pkg/image (see docs/design.md).
type ImageStore interface {
	// Create makes an empty image dir whose only delta is opts.DeltaFile.
	Create(ctx context.Context, dir string, size int64, opts CreateOptions) error
	// CreateOnChain makes an image dir on top of frozen base deltas (bottom..top) plus
	// a new empty writable top opts.DeltaFile. Constant time.
	CreateOnChain(ctx context.Context, dir string, base []string, size int64, opts CreateOptions) error
	// SnapshotDir freezes the top of an unattached image; new writes go to
	// opts.NewDeltaFile. The descriptor rename is its commit point.
	SnapshotDir(ctx context.Context, dir string, opts SnapshotOptions) (frozenGUID string, err error)
	// ChainFiles is ReadDescriptor(dir) + Descriptor.ChainFiles(dir): absolute paths,
	// bottom..top.
	ChainFiles(ctx context.Context, dir string) ([]string, error)
	// GrowDir grows an unattached image to size.
	GrowDir(ctx context.Context, dir string, size int64) error
	// AllocatedBytes is the data held by one delta file.
	AllocatedBytes(ctx context.Context, path string) (int64, error)
	// MergeDir merges req.Parent with req.Child, the delta right above it in
	// the chain of the unattached image dir, and rewrites the descriptor
	// without the dropped delta (the commit point). The dropped file stays:
	// the caller removes it once nothing references it. Every chain's
	// content is the same before, during and after; a merge cut short can
	// be run again in either direction.
	MergeDir(ctx context.Context, dir string, req MergeRequest) (MergeResult, error)
	// MergeDeltas is the copy of MergeDir for two frozen delta files that
	// lie in no image's chain (snapshot chains whose volume is gone): the
	// kept file holds both views afterwards; nothing is rewritten or removed.
	MergeDeltas(ctx context.Context, req MergeRequest) (MergeResult, error)
}

// MergeDirection says which way a merge copies.
type MergeDirection string

const (
	// MergeAuto takes the direction that copies less, judged from the BATs.
	MergeAuto MergeDirection = ""
	// MergeDown copies the child's clusters into the parent; the child
	// leaves the chain. Cost: the child's clusters.
	MergeDown MergeDirection = "down"
	// MergeUp copies the parent's clusters the child lacks into the child;
	// the parent leaves the chain. Cost: those clusters.
	MergeUp MergeDirection = "up"
)

// MergeRequest names two adjacent deltas of a chain.
type MergeRequest struct {
	Parent    string // absolute path of the lower delta
	Child     string // absolute path of the delta right above it
	Direction MergeDirection
}

// MergeResult says what a merge did.
type MergeResult struct {
	Direction MergeDirection // the direction taken (never MergeAuto)
	// Kept holds the combined view now; Dropped is out of the chain (its
	// file is left for the caller to remove).
	Kept, Dropped string
	BytesCopied   int64
	Duration      time.Duration
	// Pause is how long I/O waited at the switch (online merges).
	Pause time.Duration
}

// Attacher serves an image dir as a block device (pkg/attach). All methods are
// idempotent; the serving process owns the chain while attached, so online snapshot
// and grow must go through it rather than through ImageStore.
type Attacher interface {
	Attach(ctx context.Context, volDir string) (devicePath string, err error)
	Detach(ctx context.Context, volDir string) error
	Attached(ctx context.Context, volDir string) (devicePath string, ok bool, err error)
	// Snapshot quiesces I/O, freezes the fs, switches the top to newDeltaFile and
	// rewrites the descriptor itself.
	Snapshot(ctx context.Context, volDir, newDeltaFile string) (frozenGUID string, err error)
	Grow(ctx context.Context, volDir string, size int64) error
	// Merge is ImageStore.MergeDir on an attached image, done by its serving
	// process while I/O goes on (a background copy, then a short switch).
	Merge(ctx context.Context, volDir string, req MergeRequest) (MergeResult, error)
	// Health returns why an attached volume failed ("" when it is healthy or
	// not attached): a failed sync of a delta makes every later write, flush
	// and snapshot fail until it is detached, checked and attached again.
	Health(ctx context.Context, volDir string) (failure string, err error)
}

// FsStats is what NodeGetVolumeStats reports for a mounted filesystem.
type FsStats struct {
	TotalBytes, AvailableBytes, UsedBytes int64
	TotalInodes, FreeInodes, UsedInodes   int64
}

// Mounter is the node-side filesystem seam; realMounter wraps k8s.io/mount-utils.
type Mounter interface {
	// FormatAndMount formats source with fsType if it holds no filesystem, then mounts it.
	FormatAndMount(ctx context.Context, source, target, fsType string, options []string) error
	// Mount is a plain mount; callers pass "bind" (and "ro") for publish.
	Mount(ctx context.Context, source, target, fsType string, options []string) error
	Unmount(ctx context.Context, target string) error
	// IsMountPoint reports false (no error) when target does not exist.
	IsMountPoint(ctx context.Context, target string) (bool, error)
	// MountedFrom reports whether path is a mount point of the filesystem on
	// the block device devicePath (bind mounts of it included), as opposed to
	// not mounted, or mounted from another (e.g. a lost) device.
	MountedFrom(ctx context.Context, path, devicePath string) (bool, error)
	// GrowUnmounted grows the filesystem on the unmounted devicePath to the
	// device size if it is smaller and can grow offline (ext4: needs no
	// CAP_SYS_RESOURCE, unlike an online grow). Anything else is left as it is.
	GrowUnmounted(ctx context.Context, devicePath string) error
	// ResizeFs grows the filesystem on devicePath mounted at mountPath to the device size.
	ResizeFs(ctx context.Context, devicePath, mountPath string) error
	// NeedResize reports whether the filesystem on devicePath (mounted at
	// mountPath) is smaller than the device, as after a restore into a
	// larger volume.
	NeedResize(ctx context.Context, devicePath, mountPath string) (bool, error)
	Stats(ctx context.Context, path string) (FsStats, error)
}
