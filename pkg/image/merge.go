package image

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/csi-ploop/csi-ploop/pkg/durable"
)

// MergeOptions configures MergeDir.
type MergeOptions struct {
	// Shared reports whether the delta file at path (absolute, cleaned) is
	// referenced by a chain other than this image's: another image
	// directory, a restore or clone based on this image, a snapshot record.
	// A shared delta is never written to or removed: MergeDir fails with
	// ErrShared before it changes anything, as it does when Shared fails.
	// nil: SharedOutside(dir).
	Shared func(path string) (bool, error)
	// FS is the file system; nil: the real one.
	FS FS
	// Direction of the merge. The empty value means MergeDown (ploop's
	// snapshot-merge) unless Auto is set, which picks the cheaper one.
	Direction MergeDirection
	Auto      bool
	Progress  MergeProgress   // nil: none
	Context   context.Context // nil: context.Background()
}

func (o MergeOptions) ctx() context.Context {
	if o.Context == nil {
		return context.Background()
	}
	return o.Context
}

// ErrShared means an operation would modify or remove a delta that another
// chain references.
var ErrShared = errors.New("delta is shared with another chain")

// SharedOutside is the default MergeOptions.Shared: a delta file outside
// dir counts as shared (ploop keeps an image's own deltas in its
// directory; restores and clones refer to their base outside it), one
// inside as the image's own. The test is lexical: symbolic links are not
// followed.
func SharedOutside(dir string) func(path string) (bool, error) {
	return func(path string) (bool, error) {
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return true, nil
		}
		return rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)), nil
	}
}

// MergeDir removes snapshot guid from a closed image directory by merging
// it with the delta above it (its child, possibly the top), as ploop's
// snapshot-merge does. The image's content does not change. With the
// default direction (MergeDown) the merged delta takes the child's GUID and
// place; with MergeUp the child absorbs what the snapshot held that it
// lacks; MergeAuto copies less. The dropped delta's file is deleted once
// the descriptor no longer names it. The image lock is held from before
// the descriptor is read to the end, so nothing (a snapshot, an attach)
// can change the image meanwhile. Neither delta may be shared with
// another chain (opts.Shared): ErrShared.
//
// Crash safety: until the descriptor is rewritten every chain reads as
// before (see MergeDirPair), so the merge can simply be run again.
func MergeDir(dir, guid string, opts MergeOptions) error {
	return withLockedDir(dir, &opts.FS, &opts.Shared, func(dir string, desc *Descriptor) error {
		parent, child, err := mergePair(desc, dir, guid)
		if err != nil {
			return err
		}
		direction := opts.Direction
		if direction == MergeAuto && !opts.Auto {
			direction = MergeDown
		}
		st, err := mergeInDir(opts.ctx(), dir, desc, parent, child, PairMergeOptions{
			Direction: direction, Progress: opts.Progress, Shared: opts.Shared, FS: opts.FS})
		if err != nil {
			return err
		}
		return durable.Remove(durableFS{opts.FS}, st.Dropped)
	})
}

// mergePair finds snapshot guid's delta and the one above it.
func mergePair(desc *Descriptor, dir, guid string) (parent, child DescImage, err error) {
	chain, err := desc.Chain()
	if err != nil {
		return parent, child, err
	}
	i := -1
	for k, c := range chain {
		if sameGUID(c.GUID, guid) {
			i = k
		}
	}
	switch {
	case i < 0:
		return parent, child, fmt.Errorf("%w: no snapshot %s in %s", ErrNotFound, guid, dir)
	case i == len(chain)-1:
		return parent, child, fmt.Errorf("%w: %s is the top delta, not a snapshot", ErrInvalid, guid)
	}
	return chain[i], chain[i+1], nil
}

// refuseShared fails with ErrShared if a merge of the pair would change a
// delta another chain references.
func refuseShared(shared func(string) (bool, error), parentPath, childPath string) error {
	for _, path := range []string{parentPath, childPath} {
		is, err := shared(filepath.Clean(path))
		if err != nil {
			return fmt.Errorf("is %s shared: %w", path, err)
		}
		if is {
			return fmt.Errorf("%w: %s would be changed by a merge, but another chain references it", ErrShared, path)
		}
	}
	return nil
}

// ErrNotFound means a named snapshot or image does not exist.
var ErrNotFound = errors.New("not found")

// withoutMerged returns a copy of the descriptor where the pair's kept
// file has replaced both: child's image entry carries keptFile (parent's
// file after a down merge, its own after an up merge) and parent's entry
// is gone, so the snapshot parent no longer exists.
func (d *Descriptor) withoutMerged(parentGUID, childGUID, keptFile string) *Descriptor {
	next := *d
	next.Storage = []Storage{d.Storage[0]}
	var images []DescImage
	for _, img := range d.Storage[0].Images {
		if !sameGUID(img.GUID, parentGUID) {
			images = append(images, img)
		}
	}
	for k := range images {
		if sameGUID(images[k].GUID, childGUID) {
			images[k].File = keptFile
		}
	}
	next.Storage[0].Images = images
	grandparent, _ := d.parent(parentGUID)
	var shots []Shot
	for _, s := range d.Snapshots.Shots {
		switch {
		case sameGUID(s.GUID, parentGUID):
		case sameGUID(s.GUID, childGUID):
			shots = append(shots, Shot{GUID: s.GUID, ParentGUID: grandparent})
		default:
			shots = append(shots, s)
		}
	}
	next.Snapshots.Shots = shots
	return &next
}
