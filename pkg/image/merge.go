package image

import (
	"errors"
	"fmt"
)

// MergeDir removes snapshot guid from a closed image directory by merging
// the delta above it (its child, possibly the top) down into it, as ploop's
// snapshot-merge does. The image's content does not change. The merged delta
// takes the child's GUID and place; the child's file is deleted.
//
// Crash safety: until the descriptor is rewritten the child still covers
// every cluster being copied, so reads are unchanged at every step and the
// merge can simply be run again. The delta named by guid must not be shared
// with another image.
func MergeDir(dir, guid string) error {
	img, err := OpenDir(dir, OpenOptions{ReadOnly: true, FS: NewOSFS(false)})
	if err != nil {
		return err
	}
	desc := img.desc
	img.Close()
	if err := img.takeLock(); err != nil {
		return err
	}
	defer img.unlock()
	chain, err := desc.Chain()
	if err != nil {
		return err
	}
	i := -1
	for k, c := range chain {
		if sameGUID(c.GUID, guid) {
			i = k
		}
	}
	switch {
	case i < 0:
		return fmt.Errorf("%w: no snapshot %s in %s", ErrNotFound, guid, dir)
	case i == len(chain)-1:
		return fmt.Errorf("%w: %s is the top delta, not a snapshot", ErrInvalid, guid)
	}
	parent, child := chain[i], chain[i+1]
	fsys := NewOSFS(false)
	if err := mergeDeltas(fsys, resolve(dir, child.File), resolve(dir, parent.File)); err != nil {
		return err
	}
	next := desc.withoutMerged(parent.GUID, child.GUID)
	if err := next.write(fsys, dir); err != nil {
		return err
	}
	return fsys.Remove(resolve(dir, child.File))
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
