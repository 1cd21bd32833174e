package image

import (
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
// the delta above it (its child, possibly the top) down into it, as ploop's
// snapshot-merge does. The image's content does not change. The merged delta
// takes the child's GUID and place; the child's file is deleted. The image
// lock is held from before the descriptor is read to the end, so nothing
// (a snapshot, an attach) can change the image meanwhile. Neither delta
// may be shared with another chain (opts.Shared): ErrShared.
//
// Crash safety: until the descriptor is rewritten the child still covers
// every cluster being copied, so reads are unchanged at every step and the
// merge can simply be run again.
func MergeDir(dir, guid string, opts MergeOptions) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if opts.FS == nil {
		opts.FS = NewOSFS(false)
	}
	if opts.Shared == nil {
		opts.Shared = SharedOutside(dir)
	}
	img := &Image{Dir: dir, fs: opts.FS}
	if err := img.takeLock(); err != nil {
		return err
	}
	defer img.unlock()
	desc, err := readDescriptor(opts.FS, dir)
	if err != nil {
		return err
	}
	parent, child, err := mergePair(desc, dir, guid)
	if err != nil {
		return err
	}
	parentPath, childPath := resolve(dir, parent.File), resolve(dir, child.File)
	if err := refuseShared(opts.Shared, parentPath, "merged into"); err != nil {
		return err
	}
	if err := refuseShared(opts.Shared, childPath, "deleted"); err != nil {
		return err
	}
	if err := mergeDeltas(opts.FS, childPath, parentPath); err != nil {
		return err
	}
	next := desc.withoutMerged(parent.GUID, child.GUID)
	if err := next.write(opts.FS, dir); err != nil {
		return err
	}
	return durable.Remove(durableFS{opts.FS}, childPath)
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

func refuseShared(shared func(string) (bool, error), path, what string) error {
	is, err := shared(filepath.Clean(path))
	if err != nil {
		return fmt.Errorf("is %s shared: %w", path, err)
	}
	if is {
		return fmt.Errorf("%w: %s would be %s, but another chain references it", ErrShared, path, what)
	}
	return nil
}

// ErrNotFound means a named snapshot or image does not exist.
var ErrNotFound = errors.New("not found")

// mergeDeltas copies every cluster of child into parent, growing parent to
// child's size first.
func mergeDeltas(fsys FS, childPath, parentPath string) error {
	child, err := openDelta(fsys, childPath, false)
	if err != nil {
		return err
	}
	defer child.close(true)
	parent, err := openDelta(fsys, parentPath, true)
	if err != nil {
		return err
	}
	if child.h.Size() > parent.h.Size() {
		if _, err := parent.grow(child.h.Size()); err != nil {
			return errors.Join(err, parent.close(!errors.Is(err, ErrSyncFailed)))
		}
	}
	entries := make(map[uint32]uint32)
	err = parent.forEachEntry(func(vc, e uint32) error { entries[vc] = e; return nil })
	buf := make([]byte, child.h.ClusterSize())
	if err == nil {
		err = child.forEachEntry(func(vc, e uint32) error {
			if _, err := child.f.ReadAt(buf, child.h.clusterOffset(e)); err != nil {
				return fmt.Errorf("read %s: %w", childPath, err)
			}
			return parent.putCluster(vc, entries[vc], buf)
		})
	}
	if err == nil {
		err = parent.sync()
	}
	return errors.Join(err, parent.close(!errors.Is(err, ErrSyncFailed)))
}

// putCluster writes a whole cluster for vc: in place when the delta holds it
// (entry != 0), else into a new cluster synced before its BAT entry.
func (d *Delta) putCluster(vc, entry uint32, data []byte) error {
	if entry != 0 {
		_, err := d.f.WriteAt(data, d.h.clusterOffset(entry))
		return err
	}
	off, entry, err := d.allocate()
	if err != nil {
		return err
	}
	if _, err := d.f.WriteAt(data, off); err != nil {
		return err
	}
	if err := d.sync(); err != nil {
		return err
	}
	return d.setEntry(vc, entry)
}

// withoutMerged returns a copy of the descriptor where parent's delta has
// replaced child's: child's image entry is gone and parent's file carries
// child's GUID, so the snapshot parent no longer exists.
func (d *Descriptor) withoutMerged(parentGUID, childGUID string) *Descriptor {
	next := *d
	next.Storage = []Storage{d.Storage[0]}
	var parentFile string
	var images []DescImage
	for _, img := range d.Storage[0].Images {
		if sameGUID(img.GUID, parentGUID) {
			parentFile = img.File
		} else {
			images = append(images, img)
		}
	}
	for k := range images {
		if sameGUID(images[k].GUID, childGUID) {
			images[k].File = parentFile
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
