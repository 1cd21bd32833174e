package image

import (
	"context"
	"errors"
	"fmt"
)

// Merge merges two adjacent deltas of an open chain while it serves I/O
// (the serving process). The copy runs through separate handles, or for
// the writable top as child under the per-cluster allocation locks; then,
// at the switch, under the chain's write lock (I/O drained), record is
// called with the chain's new delta paths bottom..top: it rewrites the
// descriptor (the commit point). If record fails the switch is undone and
// the chain serves as before. ctx cancels the copy phase: nothing changes
// then.
func (c *Chain) Merge(ctx context.Context, parentPath, childPath string, opts PairMergeOptions, record func(newPaths []string) error) (MergeStats, error) {
	return MergeStats{}, fmt.Errorf("online merge: %w", errors.ErrUnsupported)
}
