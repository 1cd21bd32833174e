package image

import (
	"context"
	"fmt"
	"slices"
)

// MergeOnline merges two adjacent deltas of the open image while it serves
// I/O (Chain.Merge) and, at the switch, rewrites the descriptor without the
// dropped delta. The image's own descriptor follows, so that a later
// Snapshot or Grow writes one without the dropped delta (a stale one would
// put it back into the chain). parentPath and childPath are paths of the
// image's chain, child right above parent. The dropped file stays.
//
// The caller serializes MergeOnline with Snapshot and Grow (the serving
// process runs one control operation that rewrites the descriptor at a
// time).
func (img *Image) MergeOnline(ctx context.Context, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	parent, child, err := pairByPath(img.desc, img.Dir, parentPath, childPath)
	if err != nil {
		return MergeStats{}, err
	}
	record := func(newPaths []string) error {
		next, err := img.desc.merged(img.Dir, parent, child, newPaths)
		if err != nil {
			return err
		}
		if err := next.write(img.fs, img.Dir); err != nil {
			return err
		}
		img.desc = next
		return nil
	}
	return img.chain.Merge(ctx, parentPath, childPath, opts, record)
}

// merged is the descriptor after a merge of parent and child whose chain
// is newPaths: the parent's GUID is gone (that snapshot no longer exists),
// the child's GUID names the kept file (the parent's file after a merge
// down, its own after a merge up).
func (d *Descriptor) merged(dir string, parent, child DescImage, newPaths []string) (*Descriptor, error) {
	kept := parent.File // merged down
	if slices.Contains(newPaths, resolve(dir, child.File)) {
		kept = child.File // merged up
	}
	next := d.withoutMerged(parent.GUID, child.GUID, kept)
	files, err := next.ChainFiles(dir)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(files, newPaths) {
		return nil, fmt.Errorf("%w: the merged chain %v does not match the descriptor's %v", ErrInvalid, newPaths, files)
	}
	return next, nil
}
