package image

import "fmt"

// reserveAhead bounds how much space allocate reserves past the clusters
// in use when the file has to grow: an eighth of the data so far, at least
// a cluster (speculative preallocation, as file systems do). Each
// reservation (fallocate, like a truncate) waits for every direct I/O in
// flight on the file (ext4's inode_dio_wait), so one per allocated cluster
// would drain the queue every time; growing in steps costs at most
// reserveAhead of unused space while the image is open. Close and Snapshot
// cut the unused tail.
const reserveAhead = 16 << 20

// allocate reserves a cluster for new data: a free one inside the file if
// there is one (free clusters are holes), else the next one at the end. Its
// disk space is allocated (File.Allocate) before it is handed out: the
// cluster reads as zeros until written, and the writes into it, first touch
// included, are overwrites for the file system (no block allocation, no
// exclusive inode lock per write).
func (d *Delta) allocate() (off int64, entry uint32, err error) {
	d.allocMu.Lock()
	defer d.allocMu.Unlock()
	cs := d.h.ClusterSize()
	if n := len(d.free); n > 0 {
		off = d.free[n-1]
		if err := d.f.Allocate(off, cs); err != nil {
			return 0, 0, fmt.Errorf("allocate a cluster in %s: %w", d.path, err)
		}
		d.free = d.free[:n-1]
		return off, d.h.batEntryFor(off), nil
	}
	off = d.next
	if off+cs > d.reserved {
		n := max(cs, min(reserveAhead, (off-d.h.DataStart())/8)/cs*cs)
		if err := d.f.Allocate(off, n); err != nil {
			// Short of space for the batch: try for the one cluster.
			if err := d.f.Allocate(off, cs); err != nil {
				return 0, 0, fmt.Errorf("allocate a cluster in %s: %w", d.path, err)
			}
			n = cs
		}
		d.reserved = off + n
	}
	d.next = off + cs
	return off, d.h.batEntryFor(off), nil
}

// trimReserve cuts the reserved space past the last allocated cluster (a
// frozen or closed delta keeps no unused tail: check would call it leaked).
func (d *Delta) trimReserve() error {
	d.allocMu.Lock()
	defer d.allocMu.Unlock()
	if d.reserved <= d.next {
		return nil
	}
	if err := d.f.Truncate(d.next); err != nil {
		return fmt.Errorf("trim %s: %w", d.path, err)
	}
	d.reserved = d.next
	return nil
}

// release gives back a cluster that allocate returned but no entry points
// at (its write failed). It is punched first, so that it reads as zeros
// when reused; if that fails it stays leaked until the next check.
func (d *Delta) release(off int64) {
	if d.f.Punch(off, d.h.ClusterSize()) != nil {
		return
	}
	d.allocMu.Lock()
	defer d.allocMu.Unlock()
	d.free = append(d.free, off)
}

// findFree collects the clusters between the data start and the end of the
// file that no BAT entry uses (used) and that are holes: what a crash leaves
// of allocations whose entries never reached the BAT, once the check on
// open has punched them. allocate reuses them before growing the file.
func (d *Delta) findFree(used bitmap, fileSize int64) error {
	cs := d.h.ClusterSize()
	return used.unsetRuns((d.h.DataStart()+cs-1)/cs, fileSize/cs, func(lo, hi int64) error {
		holes, err := holeClusters(d.f, lo*cs, hi*cs, cs)
		d.free = append(d.free, holes...)
		return err
	})
}

// holeClusters returns the clusters of [lo, hi) that hold no data.
func holeClusters(f File, lo, hi, cs int64) ([]int64, error) {
	var out []int64
	for pos := lo; pos < hi; {
		start, stop, err := f.Data(pos, hi)
		if err != nil {
			return nil, err
		}
		for c := (pos + cs - 1) / cs * cs; c+cs <= start; c += cs {
			out = append(out, c)
		}
		if start >= hi {
			break
		}
		pos = max((stop+cs-1)/cs*cs, start+1)
	}
	return out, nil
}
