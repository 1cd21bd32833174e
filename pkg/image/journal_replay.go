package image

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// fileIdentity names f, or says it cannot (no journal for such a top).
func fileIdentity(f File) (FileIdentity, bool) {
	idf, ok := f.(identified)
	if !ok {
		return FileIdentity{}, false
	}
	id, err := idf.Identity()
	return id, err == nil
}

// replayJournal applies what j recorded for the top delta at path to its
// BAT, durably and in ploop's order, and leaves j empty and bound to that
// top. It runs on a writable open before anything else looks at the top:
// the recovery of a dirty top would punch the clusters of these entries as
// leaked. An entry is applied only where the on-disk BAT has no entry yet
// and the cluster lies inside the file, aligned, and used by no other
// entry; the rest (entries a commit wrote already, anything a bug or a
// foreign file put there) is skipped: replay never makes an image worse.
func replayJournal(fsys FS, path string, j *PendingJournal) error {
	f, err := fsys.Open(path, true)
	if err != nil {
		return fmt.Errorf("open delta: %w", err)
	}
	defer f.Close()
	id, ok := fileIdentity(f)
	if !ok {
		return nil
	}
	d, err := newDelta(f, path, false)
	if err != nil {
		return fmt.Errorf("delta %s: %w", path, err)
	}
	if d.h.Version != 2 {
		return nil // read-only format: nothing was allocated
	}
	entries, why := j.load(id, d.h.ClusterSize())
	if why != "" {
		j.log.Warn("pending-allocation journal not replayed", "delta", path, "reason", why)
	}
	if len(entries) > 0 {
		applied, err := applyEntries(d, entries)
		if err != nil {
			return fmt.Errorf("replay pending allocations into %s: %w", path, err)
		}
		j.log.Info("pending allocations replayed", "delta", path, "recorded", len(entries), "applied", applied)
	}
	j.reset(id, d.h.ClusterSize())
	return nil
}

// applyEntries writes the valid entries into d's BAT: the data first
// (fdatasync: on the same boot the page cache still holds what the dead
// process wrote), then the BAT entries, then fdatasync again.
func applyEntries(d *Delta, entries []JournalEntry) (int, error) {
	size, err := d.f.Size()
	if err != nil {
		return 0, err
	}
	cs := d.h.ClusterSize()
	used := newBitmap(size/cs + 1)
	onDisk := newBitmap(int64(d.h.BATEntries)) // by virtual cluster
	err = d.forEachEntry(func(vc, entry uint32) error {
		onDisk.testAndSet(int64(vc))
		if d.entryError(vc, entry, size) == nil {
			used.testAndSet(d.h.clusterOffset(entry) / cs)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	last := map[uint32]uint32{} // vc -> entry; a later record of a vc wins
	for _, e := range entries {
		last[e.VC] = e.Entry
	}
	vcs := make([]uint32, 0, len(last))
	for vc, entry := range last {
		if vc >= d.h.BATEntries || onDisk.test(int64(vc)) || d.entryError(vc, entry, size) != nil ||
			used.testAndSet(d.h.clusterOffset(entry)/cs) {
			continue
		}
		vcs = append(vcs, vc)
	}
	if len(vcs) == 0 {
		return 0, nil
	}
	slices.Sort(vcs)
	if err := d.sync(); err != nil {
		return 0, err
	}
	var b [4]byte
	for _, vc := range vcs {
		binary.LittleEndian.PutUint32(b[:], last[vc])
		if _, err := d.f.WriteAt(b[:], HeaderSize+4*int64(vc)); err != nil {
			return 0, fmt.Errorf("%w: write BAT entry %d: %w", ErrSyncFailed, vc, err)
		}
	}
	return len(vcs), d.sync()
}

// bindJournal empties j and makes it record the allocations of the chain's
// top. A top that cannot name itself gets no journal.
func (c *Chain) bindJournal(j *PendingJournal) {
	id, ok := fileIdentity(c.top().f)
	if !ok {
		j.clear()
		c.journal = nil
		return
	}
	j.reset(id, c.cs)
	c.journal = j
}

// ReplayJournalDir applies j (see OpenOptions.Journal) to the top of the
// image directory dir, which no process may have open for writing (the
// image lock; ErrBusy otherwise): what an offline operation (SnapshotDir,
// GrowDir, Check with repair) needs first after a serving process died,
// or it reclaims the clusters of the writes that process acknowledged.
// j is left empty.
func ReplayJournalDir(dir string, j *PendingJournal) error {
	fsys := NewOSFS(false)
	return withDirLock(fsys, dir, func(desc *Descriptor) error {
		files, err := desc.ChainFiles(dir)
		if err != nil {
			return err
		}
		return replayJournal(fsys, files[len(files)-1], j)
	})
}
