package image

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// MergeDirPair merges two adjacent deltas of the closed image dir, offline.
// The image lock is held from before the descriptor is read to the end
// (ErrBusy when the image is open elsewhere, e.g. attached). parentPath
// and childPath must be adjacent in dir's chain (child right above parent;
// the child may be the top). The descriptor is rewritten without the
// dropped delta: that rename is the commit point. Until then every chain
// reads as before, so a merge cut short can be run again in either
// direction. The dropped file is not removed.
func MergeDirPair(ctx context.Context, dir, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	var st MergeStats
	err := withLockedDir(dir, &opts.FS, &opts.Shared, func(dir string, desc *Descriptor) error {
		parent, child, err := pairByPath(desc, dir, parentPath, childPath)
		if err == nil {
			st, err = mergeInDir(ctx, dir, desc, parent, child, opts)
		}
		return err
	})
	return st, err
}

// withLockedDir fills in the defaults of a directory merge, takes the
// image lock, reads the descriptor and runs fn; the lock is held from
// before the read to the end, so no snapshot or attach slips in between.
func withLockedDir(dir string, fsys *FS, shared *func(string) (bool, error), fn func(dir string, desc *Descriptor) error) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if *fsys == nil {
		*fsys = NewOSFS(false)
	}
	if *shared == nil {
		*shared = SharedOutside(dir)
	}
	return withDirLock(*fsys, dir, func(desc *Descriptor) error { return fn(dir, desc) })
}

// mergeInDir copies, then commits the descriptor without the dropped delta.
// The caller holds the image lock.
func mergeInDir(ctx context.Context, dir string, desc *Descriptor, parent, child DescImage, opts PairMergeOptions) (MergeStats, error) {
	parentPath, childPath := resolve(dir, parent.File), resolve(dir, child.File)
	if err := refuseShared(opts.Shared, parentPath, childPath); err != nil {
		return MergeStats{}, err
	}
	st, err := mergeFiles(ctx, opts.FS, parentPath, childPath, opts)
	if err != nil {
		return st, err
	}
	kept := parent.File
	if st.Direction == MergeUp {
		kept = child.File
	}
	if err := desc.withoutMerged(parent.GUID, child.GUID, kept).write(opts.FS, dir); err != nil {
		return st, err
	}
	return st, nil
}

// pairByPath finds the descriptor entries of two adjacent deltas.
func pairByPath(desc *Descriptor, dir, parentPath, childPath string) (parent, child DescImage, err error) {
	chain, err := desc.Chain()
	if err != nil {
		return parent, child, err
	}
	for i := 0; i+1 < len(chain); i++ {
		if samePath(resolve(dir, chain[i].File), parentPath) && samePath(resolve(dir, chain[i+1].File), childPath) {
			return chain[i], chain[i+1], nil
		}
	}
	return parent, child, fmt.Errorf("%w: %s and %s are not adjacent deltas of %s", ErrNotFound, parentPath, childPath, dir)
}

func samePath(a, b string) bool { return filepath.Clean(a) == filepath.Clean(b) }

// MergeDeltaFiles merges two frozen deltas that lie in no image's chain
// (snapshot chains whose volume is gone): afterwards Kept reads as the
// pair did; nothing is rewritten or removed. Neither file may be open for
// writing elsewhere (the caller serialises merges of the pair).
func MergeDeltaFiles(ctx context.Context, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	if opts.FS == nil {
		opts.FS = NewOSFS(false)
	}
	if opts.Shared == nil {
		opts.Shared = func(string) (bool, error) { return false, nil }
	}
	if err := refuseShared(opts.Shared, parentPath, childPath); err != nil {
		return MergeStats{}, err
	}
	return mergeFiles(ctx, opts.FS, filepath.Clean(parentPath), filepath.Clean(childPath), opts)
}

// mergeFiles runs the copy engine on two closed delta files.
func mergeFiles(ctx context.Context, fsys FS, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	start := time.Now()
	// A delta a crash left marked in use (the top, or the target of a merge
	// cut short) is checked first: leaked clusters punched, mark cleared.
	for _, p := range []string{parentPath, childPath} {
		if err := recoverDirtyTop(fsys, p); err != nil {
			return MergeStats{}, err
		}
	}
	dir, total, err := chooseFiles(fsys, parentPath, childPath, opts.Direction)
	if err != nil {
		return MergeStats{}, err
	}
	st := MergeStats{Direction: dir, Kept: parentPath, Dropped: childPath}
	srcPath := childPath
	if dir == MergeUp {
		st.Kept, st.Dropped, srcPath = childPath, parentPath, parentPath
	}
	p := &pairCopy{ctx: ctx, down: dir == MergeDown, progress: opts.Progress, total: total}
	err = copyFiles(fsys, p, srcPath, st.Kept, nil)
	st.BytesCopied, st.Duration = p.copied, time.Since(start)
	return st, err
}

// chooseFiles reads the BATs to resolve the direction and its cost.
func chooseFiles(fsys FS, parentPath, childPath string, want MergeDirection) (MergeDirection, int64, error) {
	e, err := estimateFiles(fsys, parentPath, childPath)
	if err != nil {
		return "", 0, err
	}
	dir, err := pick(want, e.down, e.up)
	return dir, e.cost(dir), err
}

// prepareTarget lets the destination reuse its holes and, for a down merge
// into a parent smaller than the child (the volume grew after the
// snapshot), grows the parent first: its BAT must cover every cluster.
func prepareTarget(p *pairCopy) error {
	if err := prepareAlloc(p.dst); err != nil {
		return err
	}
	if p.down && p.src.h.Size() > p.dst.h.Size() {
		if _, err := p.dst.grow(p.src.h.Size()); err != nil {
			return fmt.Errorf("grow %s: %w", p.dst.path, err)
		}
	}
	return nil
}
