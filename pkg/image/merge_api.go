package image

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// MergeDirection says which way a merge of two adjacent deltas copies.
type MergeDirection string

const (
	// MergeAuto takes the direction that copies less, judged from the BATs
	// (no data is read to decide).
	MergeAuto MergeDirection = ""
	// MergeDown copies the child's clusters into the parent (in place where
	// the parent holds the cluster, appended otherwise); the child leaves
	// the chain. Cost: the child's clusters.
	MergeDown MergeDirection = "down"
	// MergeUp copies the parent's clusters the child lacks into the child;
	// the parent leaves the chain. Cost: the parent's clusters the child
	// does not shadow.
	MergeUp MergeDirection = "up"
)

// MergeProgress reports bytes copied so far out of total. It is called
// from the copying goroutine, often enough for a progress bar (not
// necessarily per cluster).
type MergeProgress func(done, total int64)

// PairMergeOptions configures MergeDirPair, MergeDeltaFiles and Chain.Merge.
type PairMergeOptions struct {
	Direction MergeDirection
	Progress  MergeProgress // nil: none
	// Shared reports whether a delta file (absolute, cleaned path) is
	// referenced by another chain. A shared delta is never written or
	// removed: the merge fails with ErrShared before it changes anything.
	// nil: SharedOutside(dir) for MergeDirPair, nothing shared for the
	// others.
	Shared func(path string) (bool, error)
	FS     FS // nil: the real file system
}

// MergeStats says what a merge did.
type MergeStats struct {
	Direction MergeDirection // the direction taken (never MergeAuto)
	// Kept holds the combined view now; Dropped left the chain. Both are
	// absolute paths. Dropped's file is NOT removed by the merge functions:
	// the caller removes it once nothing references it.
	Kept, Dropped string
	BytesCopied   int64
	Duration      time.Duration
	// Pause is how long I/O waited at the switch (online merges only).
	Pause time.Duration
}

// errMergeTodo marks parts of the engine not implemented yet.
var errMergeTodo = fmt.Errorf("merge engine: %w", errors.ErrUnsupported)

// EstimateMerge reads only the headers and BATs of two adjacent deltas and
// returns the bytes a merge would copy in each direction.
func EstimateMerge(parentPath, childPath string) (down, up int64, err error) {
	return 0, 0, errMergeTodo
}

// MergeDirPair merges two adjacent deltas of the closed image dir, offline.
// The image lock is held from before the descriptor is read to the end.
// parentPath and childPath must be adjacent in dir's chain (child right
// above parent; the child may be the top). The descriptor is rewritten
// without the dropped delta: that rename is the commit point. Until then
// every chain reads as before, so a merge cut short can be run again in
// either direction.
func MergeDirPair(ctx context.Context, dir, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	return MergeStats{}, errMergeTodo
}

// MergeDeltaFiles merges two frozen deltas that lie in no image's chain
// (snapshot chains whose volume is gone): afterwards Kept reads as the
// child did and as the pair did; nothing is rewritten or removed.
func MergeDeltaFiles(ctx context.Context, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	return MergeStats{}, errMergeTodo
}

// Merge merges two adjacent deltas of an open chain while it serves I/O
// (the serving process). The copy runs through separate handles, or for
// the writable top as child under the per-cluster allocation locks; then,
// at the switch, under the chain's write lock (I/O drained), record is
// called with the chain's new delta paths bottom..top: it rewrites the
// descriptor (the commit point). If record fails the switch is undone and
// the chain serves as before. ctx cancels the copy phase: nothing changes
// then.
func (c *Chain) Merge(ctx context.Context, parentPath, childPath string, opts PairMergeOptions, record func(newPaths []string) error) (MergeStats, error) {
	return MergeStats{}, errMergeTodo
}
