package image

import (
	"fmt"
	"slices"
)

// grow raises the delta's virtual size. When the larger BAT does not fit
// before the first data cluster, the clusters in the way are moved to the end
// of the file first. Every step leaves a consistent image:
//  1. copy each cluster in the way, sync, point its BAT entry at the copy;
//  2. sync the BAT, then zero the area the BAT will grow into (nothing
//     references it any more);
//  3. write the header with the new size and data offset, sync.
//
// A crash before 3 leaves the old size with some clusters already moved.
// It returns the BAT entries that moved (virtual cluster -> new entry).
func (d *Delta) grow(size int64) (map[uint32]uint32, error) {
	nh, err := NewHeader(size, d.h.ClusterSize())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	nh.InUse, nh.Flags, nh.ExtOffset = d.h.InUse, d.h.Flags, d.h.ExtOffset
	var moved map[uint32]uint32
	if nh.DataStart() <= d.h.DataStart() {
		nh.DataOffset = d.h.DataOffset // the BAT fits: nothing moves
	} else if moved, err = d.relocate(nh.DataStart()); err != nil {
		return nil, err
	}
	if err := d.writeHeader(nh); err != nil {
		return nil, err
	}
	if err := d.sync(); err != nil {
		return nil, err
	}
	d.h = nh
	return moved, nil
}

// relocate moves every data cluster below newStart to the end of the file
// and zeroes [old BAT end, newStart) so it can hold BAT entries.
func (d *Delta) relocate(newStart int64) (map[uint32]uint32, error) {
	cs := d.h.ClusterSize()
	d.allocMu.Lock()
	d.next = max(d.next, newStart)
	d.free = slices.DeleteFunc(d.free, func(off int64) bool { return off < newStart })
	d.allocMu.Unlock()
	moved := map[uint32]uint32{}
	buf := make([]byte, cs)
	err := d.forEachEntry(func(vc, entry uint32) error {
		off := d.h.clusterOffset(entry)
		if off >= newStart {
			return nil
		}
		if _, err := d.f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read cluster %d: %w", vc, err)
		}
		to, newEntry, err := d.allocate()
		if err != nil {
			return err
		}
		if _, err := d.f.WriteAt(buf, to); err != nil {
			return fmt.Errorf("move cluster %d: %w", vc, err)
		}
		if err := d.sync(); err != nil {
			return err
		}
		moved[vc] = newEntry
		return d.setEntry(vc, newEntry)
	})
	if err != nil {
		return nil, err
	}
	if err := d.sync(); err != nil {
		return nil, err
	}
	if err := d.f.Punch(d.h.BATBytes(), newStart-d.h.BATBytes()); err != nil {
		return nil, fmt.Errorf("clear new BAT area: %w", err)
	}
	// The header about to be written requires the file to hold the whole BAT.
	if size, err := d.f.Size(); err != nil {
		return nil, err
	} else if size < newStart {
		if err := d.f.Truncate(newStart); err != nil {
			return nil, err
		}
	}
	return moved, d.sync()
}
