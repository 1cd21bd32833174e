package image

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
)

// Online merge of the writable top down into its parent (ploop's online
// merge): the parent, opened writable through its own handle, gets a copy
// of every cluster the top holds while I/O goes on. Writes and discards
// that land meanwhile mark their clusters dirty (after they complete), and
// dirty clusters are copied again, pass after pass, until few are left.
// The switch then runs under the write lock: it commits the top (nothing
// pending), copies what is still dirty, syncs the parent's data and BAT,
// calls record, and makes the parent the chain's writable top. The pause
// is the commit, the last few clusters and two syncs.
//
// Why a cluster is never missed: its dirty bit is cleared before it is
// read, and a writer sets it after its write completed; so a write the
// copy may have missed, or read torn, completes after the clear and sets
// it again. Crash safety is the frozen case's: the parent is written only
// where the top shadows it, appended clusters are unreferenced until their
// synced BAT entries, and record (the descriptor) is the commit point.

// dirtyPasses bounds the copy passes before the switch; dirtyLeft is few
// enough to copy with I/O drained.
const (
	dirtyPasses = 8
	dirtyLeft   = 64
)

// dirtySet is a bitmap of virtual clusters, safe for concurrent use.
type dirtySet struct{ words []atomic.Uint64 }

func newDirtySet(clusters uint32) *dirtySet {
	return &dirtySet{words: make([]atomic.Uint64, (uint64(clusters)+63)/64)}
}

func (d *dirtySet) set(vc uint32) {
	if w := int(vc / 64); w < len(d.words) {
		d.words[w].Or(1 << (vc % 64))
	}
}

func (d *dirtySet) clear(vc uint32) {
	if w := int(vc / 64); w < len(d.words) {
		d.words[w].And(^(uint64(1) << (vc % 64)))
	}
}

// drain returns the clusters set and clears them.
func (d *dirtySet) drain() []uint32 {
	var out []uint32
	for i := range d.words {
		for w := d.words[i].Swap(0); w != 0; w &= w - 1 {
			out = append(out, uint32(i*64+bits.TrailingZeros64(w)))
		}
	}
	return out
}

// markDirty records a completed write or discard of [off, off+n) for an
// online merge copying the top, if one runs.
func (c *Chain) markDirty(off, n int64) {
	d := c.dirty.Load()
	if d == nil || n <= 0 {
		return
	}
	for vc := off / c.cs; vc <= (off+n-1)/c.cs; vc++ {
		d.set(uint32(vc))
	}
}

// topDown merges the top (the child) into the parent, then switches.
func (m *onlineMerge) topDown() (err error) {
	c := m.c
	if err := recoverDirtyTop(c.fs, m.parent); err != nil { // a merge a crash cut short
		return err
	}
	src, err := openDelta(c.fs, m.child, false)
	if err != nil {
		return err
	}
	defer src.close(true)
	dst, err := openDelta(c.fs, m.parent, true)
	if err != nil {
		return err
	}
	kept := false
	defer func() {
		if !kept {
			err = errors.Join(err, dst.close(!errors.Is(err, ErrSyncFailed)))
		}
	}()
	// Progress is reported by copyTop, outside the chain's locks (the
	// callback may do I/O on the chain).
	p := &pairCopy{ctx: m.ctx, src: src, dst: dst, down: true, total: m.total, manualBatch: true}
	if err := prepareAlloc(dst); err != nil {
		return err
	}
	if p.dstBAT, err = readWholeBAT(dst); err != nil {
		return err
	}
	p.buf = alignedBuffer(int(c.cs))
	if p.srcSize, err = src.f.Size(); err != nil {
		return err
	}
	dirty := newDirtySet(uint32(len(p.dstBAT)))
	c.dirty.Store(dirty)
	defer c.dirty.Store(nil)
	left, err := m.copyTopPasses(p, dirty)
	if err == nil {
		err = p.endBatch()
	}
	if err == nil {
		err = m.switchTop(p, dirty, left)
	}
	m.copied = p.copied
	kept = err == nil
	return err
}

// copyTopPasses copies every cluster of the top, then the dirty ones until
// few are left, and returns those.
func (m *onlineMerge) copyTopPasses(p *pairCopy, dirty *dirtySet) ([]uint32, error) {
	if m.progress != nil {
		m.progress(0, p.total)
	}
	for chunk := 0; ; chunk++ {
		vcs, more, err := m.topChunk(chunk)
		if err == nil {
			err = m.copyTop(p, dirty, vcs)
		}
		if err != nil || !more {
			if err != nil {
				return nil, err
			}
			break
		}
	}
	for pass := 1; ; pass++ {
		vcs := dirty.drain()
		if len(vcs) <= dirtyLeft || pass == dirtyPasses {
			return vcs, nil
		}
		if err := m.copyTop(p, nil, vcs); err != nil {
			return nil, err
		}
	}
}

// topChunk returns the clusters the top holds among those of map chunk i,
// and whether more chunks follow.
func (m *onlineMerge) topChunk(i int) ([]uint32, bool, error) {
	c := m.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := m.checkShape(); err != nil {
		return nil, false, err
	}
	if i >= len(c.m.chunks) {
		return nil, false, nil
	}
	var out []uint32
	if ch := c.m.chunks[i].Load(); ch != nil {
		top := len(c.deltas) - 1
		for j := range ch {
			if v := ch[j].Load(); v != 0 && unpack(v).level == top {
				out = append(out, uint32(i<<chunkShift|j))
			}
		}
	}
	return out, i+1 < len(c.m.chunks), nil
}

// copyTop copies the clusters vcs the top holds, each under the read lock
// (the chain's shape cannot change under it). With dirty, each bit is
// cleared before its cluster is read (see the comment at the top).
// Batches end (a sync of the parent) outside the lock.
func (m *onlineMerge) copyTop(p *pairCopy, dirty *dirtySet, vcs []uint32) error {
	for _, vc := range vcs {
		if err := m.copyTopCluster(p, dirty, vc); err != nil {
			return err
		}
		if p.batchFull() {
			if err := p.endBatch(); err != nil {
				return err
			}
			if m.progress != nil {
				m.progress(p.copied, max(p.total, p.copied))
			}
		}
	}
	return nil
}

func (m *onlineMerge) copyTopCluster(p *pairCopy, dirty *dirtySet, vc uint32) error {
	c := m.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := m.checkShape(); err != nil {
		return err
	}
	if dirty != nil {
		dirty.clear(vc)
	}
	loc, ok := c.m.get(vc)
	if !ok || loc.level != len(c.deltas)-1 {
		return nil
	}
	return p.copyCluster(vc, loc.entry, p.dstBAT[vc])
}

// switchTop finishes the copy with I/O drained and makes the parent the
// writable top; if record fails the chain stays as it was.
func (m *onlineMerge) switchTop(p *pairCopy, dirty *dirtySet, left []uint32) error {
	c := m.c
	asked := time.Now()
	c.mu.Lock()
	defer func() {
		c.mu.Unlock()
		m.pause = time.Since(asked)
	}()
	if err := m.checkShape(); err != nil {
		return err
	}
	if err := c.commit(); err != nil { // nothing pending in the top from here on
		return err
	}
	top := len(c.deltas) - 1
	for _, vc := range append(left, dirty.drain()...) {
		if loc, ok := c.m.get(vc); ok && loc.level == top {
			if err := p.copyCluster(vc, loc.entry, p.dstBAT[vc]); err != nil {
				return c.note(err)
			}
		}
	}
	if err := p.endBatch(); err != nil {
		return c.note(err)
	}
	if err := m.checkCopied(p.dstBAT); err != nil {
		return err
	}
	newPaths := make([]string, 0, top)
	for _, d := range c.deltas[:top] {
		newPaths = append(newPaths, d.path)
	}
	if m.record != nil {
		if err := m.record(newPaths); err != nil {
			return fmt.Errorf("record merge: %w", err)
		}
	}
	m.remap(p.dstBAT)
	oldParent, oldTop := c.deltas[m.level], c.deltas[top]
	c.deltas = append(c.deltas[:m.level:m.level], p.dst)
	_ = oldParent.close(true) // read-only
	_ = oldTop.close(true)    // out of every chain now: the caller removes it
	return nil
}
