package image

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Online merges. The chain keeps serving I/O while the data is copied;
// only the switch (the chain's new shape, its cluster map, the descriptor
// through record) holds the write lock, which drains I/O: that is the
// pause. Three cases:
//
//   - a frozen pair (the child is not the top): the kept delta is written
//     through a separate handle. Nothing the chain reads changes: down
//     overwrites only parent clusters the child shadows, and appended
//     clusters (either direction) are unreferenced until the switch.
//   - the top as the child, up: the parent's clusters are copied into the
//     top as the writer's own copy-ups are, under the per-cluster
//     allocation locks and as pending entries of the group commit; a
//     cluster the writer allocated meanwhile is skipped (it shadows the
//     parent anyway). The switch commits first, so the parent leaves the
//     descriptor only once every copied entry is durable.
//   - the top as the child, down: merge_topdown.go (dirty tracking).
//
// Down into a parent smaller than the child is refused (Auto takes up):
// growing it would move clusters the chain is reading.

// errOnlineDown explains the refused case.
var errOnlineDown = fmt.Errorf("online merge down: %w", errors.ErrUnsupported)

// Merge merges two adjacent deltas of an open chain while it serves I/O
// (the serving process). The copy runs through separate handles (for the
// top as child merged down, with the writes that land meanwhile copied
// again), or for the top as child merged up under the per-cluster
// allocation locks; then, at the switch, under the chain's write lock
// (I/O drained), record is called with the chain's new delta paths
// bottom..top: it rewrites the descriptor (the commit point). If record fails the chain serves as
// before. ctx cancels the copy phase: the chain's content and shape do not
// change then. One merge at a time per chain (ErrBusy); a snapshot or
// another shape change during the copy makes the merge fail (run it
// again). Down into a parent smaller than the child is not supported
// online (errors.ErrUnsupported): Auto takes up then.
func (c *Chain) Merge(ctx context.Context, parentPath, childPath string, opts PairMergeOptions, record func(newPaths []string) error) (MergeStats, error) {
	start := time.Now()
	if !c.merging.CompareAndSwap(false, true) {
		return MergeStats{}, fmt.Errorf("%w: a merge is already running on this chain", ErrBusy)
	}
	defer c.merging.Store(false)
	if opts.Shared == nil {
		opts.Shared = func(string) (bool, error) { return false, nil }
	}
	level, isTop, err := c.findPair(parentPath, childPath)
	if err != nil {
		return MergeStats{}, err
	}
	if err := refuseShared(opts.Shared, parentPath, childPath); err != nil {
		return MergeStats{}, err
	}
	dir, total, err := c.chooseOnline(parentPath, childPath, isTop, opts.Direction)
	if err != nil {
		return MergeStats{}, err
	}
	m := &onlineMerge{c: c, ctx: ctx, level: level, parent: parentPath, child: childPath,
		down: dir == MergeDown, progress: opts.Progress, total: total, record: record, top: isTop}
	st := MergeStats{Direction: dir, Kept: parentPath, Dropped: childPath}
	if dir == MergeUp {
		st.Kept, st.Dropped = childPath, parentPath
	}
	switch {
	case isTop && m.down:
		m.size = c.Size()
		err = m.topDown()
	case isTop:
		err = m.intoTop()
	default:
		err = m.frozen()
	}
	st.BytesCopied, st.Pause, st.Duration = m.copied, m.pause, time.Since(start)
	return st, err
}

// findPair returns the level of the parent and whether the child is the top.
func (c *Chain) findPair(parentPath, childPath string) (int, bool, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.checkModify(); err != nil {
		return 0, false, err
	}
	for i := 0; i+1 < len(c.deltas); i++ {
		if samePath(c.deltas[i].path, parentPath) && samePath(c.deltas[i+1].path, childPath) {
			return i, i+2 == len(c.deltas), nil
		}
	}
	return 0, false, fmt.Errorf("%w: %s and %s are not adjacent deltas of the chain", ErrNotFound, parentPath, childPath)
}

// chooseOnline resolves the direction from the on-disk BATs (the top's
// pending entries are left out: an estimate).
func (c *Chain) chooseOnline(parentPath, childPath string, isTop bool, want MergeDirection) (MergeDirection, int64, error) {
	e, err := estimateFiles(c.fs, parentPath, childPath)
	if err != nil {
		return "", 0, err
	}
	// Growing the parent would move clusters the chain reads; a top
	// smaller than its parent does not happen (volumes do not shrink).
	noDown := e.parentSize < e.childSize || isTop && e.parentSize != e.childSize
	if want == MergeAuto && noDown {
		want = MergeUp
	}
	dir, err := pick(want, e.down, e.up)
	switch {
	case err != nil:
		return "", 0, err
	case dir == MergeDown && noDown:
		return "", 0, fmt.Errorf("%w: %s is smaller than %s and cannot grow while served (merge up instead)", errOnlineDown, parentPath, childPath)
	}
	return dir, e.cost(dir), nil
}

// onlineMerge is one run of Chain.Merge.
type onlineMerge struct {
	c             *Chain
	ctx           context.Context
	level         int // the parent's; the child is level+1
	parent, child string
	down          bool
	progress      MergeProgress
	total, copied int64
	pause         time.Duration
	record        func([]string) error
	size          int64 // the top down: a grow meanwhile fails the merge
	top           bool  // the child is the top: a snapshot meanwhile fails the merge
}

// frozen merges a pair below the top through separate handles, then switches.
func (m *onlineMerge) frozen() error {
	srcPath, dstPath := m.child, m.parent
	if !m.down {
		srcPath, dstPath = m.parent, m.child
	}
	fsys := m.c.fs
	if err := recoverDirtyTop(fsys, dstPath); err != nil { // a merge a crash cut short
		return err
	}
	// chooseOnline refused a down merge into a smaller parent: prepareTarget
	// does not grow it.
	p := &pairCopy{ctx: m.ctx, down: m.down, progress: m.progress, total: m.total}
	var kept []uint32
	err := copyFiles(fsys, p, srcPath, dstPath, func(dst *Delta) (err error) {
		kept, err = readWholeBAT(dst)
		return err
	})
	m.copied = p.copied
	if err != nil {
		return err
	}
	return m.switchOver(kept, nil, func() error { return m.checkCopied(kept) })
}

// readWholeBAT reads a delta's BAT (4 bytes per virtual cluster: what the
// switch needs to point the cluster map at the kept delta's copies).
func readWholeBAT(d *Delta) ([]uint32, error) {
	out := make([]uint32, d.h.BATEntries)
	err := d.forEachEntry(func(vc, e uint32) error { out[vc] = e; return nil })
	return out, err
}

// switchOver makes the chain serve the kept delta instead of the pair:
// under the write lock it runs prepare (which makes sure the copy is
// complete and durable), calls record, and only then changes the chain
// (nothing to undo if record fails). kept is the kept delta's BAT (nil
// when the kept delta is the top: its entries are in the cluster map).
// newTop, if not nil, is the parent's writable handle that replaces both
// deltas of the pair as the top (the top merged down, merge_topdown.go).
// The deltas that leave the chain are closed once I/O resumed: the files
// are the caller's to remove.
func (m *onlineMerge) switchOver(kept []uint32, newTop *Delta, prepare func() error) error {
	c := m.c
	var dropped []*Delta
	asked := time.Now()
	c.mu.Lock()
	defer func() {
		c.mu.Unlock()
		m.pause = time.Since(asked)
		for _, d := range dropped {
			_ = d.close(true)
		}
	}()
	if err := m.checkShape(); err != nil {
		return err
	}
	if err := prepare(); err != nil {
		return err
	}
	drop := m.droppedLevel()
	newPaths := make([]string, 0, len(c.deltas)-1)
	for i, d := range c.deltas {
		if i != drop {
			newPaths = append(newPaths, d.path)
		}
	}
	if m.record != nil {
		if err := m.record(newPaths); err != nil {
			return fmt.Errorf("record merge: %w", err)
		}
	}
	m.remap(kept)
	if newTop != nil {
		dropped = []*Delta{c.deltas[m.level], c.deltas[drop]}
		c.deltas = append(c.deltas[:m.level:m.level], newTop)
		if c.journal != nil { // empty (prepare committed): now for the new top
			c.bindJournal(c.journal)
		}
		return nil
	}
	dropped = []*Delta{c.deltas[drop]}
	c.deltas = append(c.deltas[:drop:drop], c.deltas[drop+1:]...)
	return nil
}

func (m *onlineMerge) droppedLevel() int {
	if m.down {
		return m.level + 1
	}
	return m.level
}

// checkShape: the chain still holds the pair where the merge found it.
// The caller holds c.mu.
func (m *onlineMerge) checkShape() error {
	c := m.c
	if err := c.checkModify(); err != nil {
		return err
	}
	if m.level+1 >= len(c.deltas) || !samePath(c.deltas[m.level].path, m.parent) || !samePath(c.deltas[m.level+1].path, m.child) ||
		m.top && m.level+2 != len(c.deltas) || m.size != 0 && c.size != m.size {
		return fmt.Errorf("%w: the chain changed during the merge of %s and %s; run it again", ErrBusy, m.parent, m.child)
	}
	return nil
}

// checkCopied: every cluster the chain reads from the dropped delta has
// its copy in the kept one.
func (m *onlineMerge) checkCopied(kept []uint32) error {
	drop := m.droppedLevel()
	var missing error
	m.c.m.each(func(vc uint32, v uint64) uint64 {
		if unpack(v).level == drop && (int(vc) >= len(kept) || kept[vc] == 0) && missing == nil {
			missing = fmt.Errorf("%w: cluster %d of %s was not copied into %s", ErrCorrupt, vc, m.c.deltas[drop].path, m.c.deltas[m.keptLevel()].path)
		}
		return v
	})
	return missing
}

func (m *onlineMerge) keptLevel() int { return m.level + m.level + 1 - m.droppedLevel() }

// remap points the cluster map at the chain without the dropped delta:
// clusters read from the dropped delta now come from the kept one's copy,
// the kept one moves to level (if it was the child), levels above shift
// down; the flags of pending top entries are kept. The caller holds c.mu.
func (m *onlineMerge) remap(kept []uint32) {
	drop, keep := m.droppedLevel(), m.keptLevel()
	m.c.m.each(func(vc uint32, v uint64) uint64 {
		loc := unpack(v)
		switch {
		case loc.level < m.level:
			return v
		case loc.level == drop:
			loc = location{level: m.level, entry: kept[vc]}
		case loc.level == keep:
			loc.level = m.level
		default:
			loc.level--
		}
		return v&flagBits | uint64(loc.level+1)<<32 | uint64(loc.entry)
	})
}

// each replaces every non-zero packed entry v by fn(vc, v). Callers hold
// the chain's write lock (no concurrent I/O).
func (cm *clusterMap) each(fn func(vc uint32, v uint64) uint64) {
	for i := range cm.chunks {
		ch := cm.chunks[i].Load()
		if ch == nil {
			continue
		}
		for j := range ch {
			if v := ch[j].Load(); v != 0 {
				if nv := fn(uint32(i<<chunkShift|j), v); nv != v {
					ch[j].Store(nv)
				}
			}
		}
	}
}

// intoTop copies the parent's clusters the top lacks into the top (the
// child), then switches. The parent's BAT is walked through a separate
// handle; each copy runs under the read lock and the cluster's stripe, as
// a writer's copy-up does, so a write to the same cluster waits for it or
// finds it done, and a cluster the writer allocated first is skipped.
func (m *onlineMerge) intoTop() error {
	parent, err := openDelta(m.c.fs, m.parent, false)
	if err != nil {
		return err
	}
	defer parent.close(true)
	if m.progress != nil {
		m.progress(0, m.total)
	}
	n := 0
	err = parent.forEachEntry(func(vc, _ uint32) error {
		if err := m.ctx.Err(); err != nil {
			return err
		}
		if n++; m.progress != nil && n%256 == 0 {
			m.progress(m.copied, max(m.total, m.copied))
		}
		return m.copyUp(vc)
	})
	if err != nil {
		return err
	}
	// Commit what was copied while I/O goes on: the switch then has
	// little left to sync.
	if err := m.c.Flush(); err != nil {
		return err
	}
	if m.progress != nil {
		m.total = max(m.total, m.copied)
		m.progress(m.total, m.total)
	}
	return m.switchOver(nil, nil, m.finalPass)
}

// copyUp gives the top its own copy of vc if the chain reads vc from the
// parent.
func (m *onlineMerge) copyUp(vc uint32) error {
	c := m.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := m.checkShape(); err != nil {
		return err
	}
	if loc, ok := c.m.get(vc); !ok || loc.level != m.level {
		return nil // the top has it, or the chain cannot see it
	}
	stripe := &c.stripes[vc%uint32(len(c.stripes))]
	stripe.Lock()
	defer stripe.Unlock()
	loc, ok := c.m.get(vc)
	if !ok || loc.level != m.level {
		return nil // the writer allocated it meanwhile
	}
	if err := c.allocateAndWrite(c.top(), vc, nil, 0, loc, true); err != nil {
		return c.note(err)
	}
	m.copied += c.cs
	return nil
}

// finalPass runs under the write lock: it copies what is still read from
// the parent (nothing, unless the chain changed under the copy) and
// commits, so every copied entry is durable before record drops the
// parent from the descriptor.
func (m *onlineMerge) finalPass() error {
	c := m.c
	var left []uint32
	c.m.each(func(vc uint32, v uint64) uint64 {
		if unpack(v).level == m.level {
			left = append(left, vc)
		}
		return v
	})
	for _, vc := range left {
		loc, _ := c.m.get(vc)
		if err := c.allocateAndWrite(c.top(), vc, nil, 0, loc, true); err != nil {
			return c.note(err)
		}
		m.copied += c.cs
	}
	return c.commit()
}

// Merge merges two adjacent deltas of the open image online (Chain.Merge)
// and rewrites the descriptor at the switch: the dropped delta's entry is
// gone and the kept file takes the child's GUID and place. Snapshot and
// Grow of the image wait for it. The dropped file is not removed.
func (img *Image) Merge(ctx context.Context, parentPath, childPath string, opts PairMergeOptions) (MergeStats, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	parent, child, err := pairByPath(img.desc, img.Dir, parentPath, childPath)
	if err != nil {
		return MergeStats{}, err
	}
	parentPath, childPath = resolve(img.Dir, parent.File), resolve(img.Dir, child.File)
	record := func(newPaths []string) error {
		kept := parent.File
		if !slices.ContainsFunc(newPaths, func(p string) bool { return samePath(p, parentPath) }) {
			kept = child.File
		}
		next := img.desc.withoutMerged(parent.GUID, child.GUID, kept)
		if err := next.write(img.fs, img.Dir); err != nil {
			return err
		}
		img.desc = next
		return nil
	}
	return img.chain.Merge(ctx, parentPath, childPath, opts, record)
}
