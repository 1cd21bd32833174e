package image

import (
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

// MergeProgress reports the work done so far out of total, in bytes of
// whole clusters (the unit of EstimateMerge; MergeStats.BytesCopied counts
// the data actually copied, holes left out). It is called from the
// copying goroutine, at the start, after every batch of up to 32 MiB, and
// with done == total when the copy is complete (before the switch); total
// may grow when writers add work (online). Never under the chain's locks.
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
	// FS: nil is the real file system. Chain.Merge ignores it: it works
	// through the chain's own.
	FS FS
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

// EstimateMerge reads only the headers and BATs of two adjacent deltas and
// returns the bytes a merge would copy in each direction (whole clusters:
// holes inside them are not told apart without reading data).
func EstimateMerge(parentPath, childPath string) (down, up int64, err error) {
	e, err := estimateFiles(NewOSFS(false), parentPath, childPath)
	return e.down, e.up, err
}

// pairEstimate is what the BATs and headers of a pair tell before a merge.
type pairEstimate struct {
	down, up              int64 // bytes each direction copies
	parentSize, childSize int64 // virtual sizes
}

func estimateFiles(fsys FS, parentPath, childPath string) (pairEstimate, error) {
	parent, err := openDelta(fsys, parentPath, false)
	if err != nil {
		return pairEstimate{}, err
	}
	defer parent.close(true)
	child, err := openDelta(fsys, childPath, false)
	if err != nil {
		return pairEstimate{}, err
	}
	defer child.close(true)
	e := pairEstimate{parentSize: parent.h.Size(), childSize: child.h.Size()}
	e.down, e.up, err = estimate(parent, child)
	return e, err
}

// cost is what dir copies.
func (e pairEstimate) cost(dir MergeDirection) int64 {
	if dir == MergeUp {
		return e.up
	}
	return e.down
}

// estimate counts, from the BATs, the child's clusters (down) and the
// parent's clusters the child does not shadow (up).
func estimate(parent, child *Delta) (down, up int64, err error) {
	if parent.h.ClusterSize() != child.h.ClusterSize() {
		return 0, 0, fmt.Errorf("%w: %s has %d-byte clusters, %s %d", ErrInvalid,
			parent.path, parent.h.ClusterSize(), child.path, child.h.ClusterSize())
	}
	var nd, nu int64
	err = forEachPair(parent, child, max(parent.h.BATEntries, child.h.BATEntries), func(vc, p, c uint32) error {
		if c != 0 {
			nd++
		} else if vc < child.h.BATEntries {
			nu++
		}
		return nil
	})
	cs := child.h.ClusterSize()
	return nd * cs, nu * cs, err
}

// pick resolves MergeAuto: the direction that copies less; down on a tie
// (it needs no new clusters where the parent already has them).
func pick(dir MergeDirection, down, up int64) (MergeDirection, error) {
	switch dir {
	case MergeDown, MergeUp:
		return dir, nil
	case MergeAuto:
		if up < down {
			return MergeUp, nil
		}
		return MergeDown, nil
	}
	return "", fmt.Errorf("%w: merge direction %q (want %q, %q or empty)", ErrInvalid, dir, MergeDown, MergeUp)
}
