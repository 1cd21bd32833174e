package image

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
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

// dirtyPasses bounds the copy passes before the switch; dirtyLeftBytes is
// little enough to copy with I/O drained.
const (
	dirtyPasses    = 8
	dirtyLeftBytes = 8 << 20
)

// dirtySet records, per virtual cluster, which units of it (up to 64 per
// cluster, at least 4 KiB each) were written: a 4 KiB write into a cluster
// the parent holds costs a 4 KiB copy, not a cluster. Words are allocated
// per chunk of clusters where writes land. Safe for concurrent use.
type dirtySet struct {
	unit   int64 // bytes per bit
	chunks []atomic.Pointer[mapChunk]
}

type dirtyCluster struct {
	vc   uint32
	mask uint64
}

func newDirtySet(clusters uint32, cs int64) *dirtySet {
	n := (uint64(clusters) + 1<<chunkShift - 1) >> chunkShift
	return &dirtySet{unit: max(directAlign, cs/64), chunks: make([]atomic.Pointer[mapChunk], n)}
}

func (d *dirtySet) word(vc uint32, alloc bool) *atomic.Uint64 {
	i := int(vc >> chunkShift)
	if i >= len(d.chunks) {
		return nil
	}
	ch := d.chunks[i].Load()
	if ch == nil {
		if !alloc {
			return nil
		}
		d.chunks[i].CompareAndSwap(nil, new(mapChunk))
		ch = d.chunks[i].Load()
	}
	return &ch[vc&(1<<chunkShift-1)]
}

// mark records a write of [lo, hi) inside cluster vc.
func (d *dirtySet) mark(vc uint32, lo, hi int64) {
	if w := d.word(vc, true); w != nil && hi > lo {
		first, last := lo/d.unit, (hi-1)/d.unit
		w.Or((^uint64(0) >> (63 - last)) &^ (uint64(1)<<first - 1))
	}
}

// take clears vc's bits and returns them.
func (d *dirtySet) take(vc uint32) uint64 {
	if w := d.word(vc, false); w != nil {
		return w.Swap(0)
	}
	return 0
}

// drain returns the dirty clusters and clears them.
func (d *dirtySet) drain() []dirtyCluster {
	var out []dirtyCluster
	for i := range d.chunks {
		ch := d.chunks[i].Load()
		if ch == nil {
			continue
		}
		for j := range ch {
			if m := ch[j].Swap(0); m != 0 {
				out = append(out, dirtyCluster{uint32(i<<chunkShift | j), m})
			}
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
	for pos := off; pos < off+n; {
		vc, inner := pos/c.cs, pos%c.cs
		step := min(off+n-pos, c.cs-inner)
		d.mark(uint32(vc), inner, inner+step)
		pos += step
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
	dirty := newDirtySet(uint32(len(p.dstBAT)), c.cs)
	c.dirty.Store(dirty)
	defer c.dirty.Store(nil)
	left, err := m.copyTopPasses(p, dirty)
	if err == nil {
		err = p.endBatch()
	}
	if err == nil && m.progress != nil {
		m.progress(max(p.total, p.done), max(p.total, p.done))
	}
	if err == nil {
		err = m.switchTop(p, dirty, left)
	}
	m.copied = p.copied
	kept = err == nil
	return err
}

// copyTopPasses copies every cluster of the top, then what was written
// meanwhile, pass after pass, until little is left, and returns that.
func (m *onlineMerge) copyTopPasses(p *pairCopy, dirty *dirtySet) ([]dirtyCluster, error) {
	if m.progress != nil {
		m.progress(0, p.total)
	}
	for chunk, more := 0, true; more; chunk++ {
		var vcs []uint32
		var err error
		vcs, more, err = m.topChunk(chunk)
		if err != nil {
			return nil, err
		}
		todo := make([]dirtyCluster, len(vcs))
		for i, vc := range vcs {
			todo[i] = dirtyCluster{vc: vc, mask: ^uint64(0)}
		}
		if err := m.copyTop(p, dirty, todo, true); err != nil {
			return nil, err
		}
	}
	// A pass copies what writers dirtied during the one before. When that
	// stops shrinking (writers dirty as fast as it copies), another pass
	// would not shorten the final one, which runs with I/O drained.
	prev := int64(-1)
	for pass := 1; ; pass++ {
		left := dirty.drain()
		n := m.leftBytes(p, dirty, left)
		if n <= dirtyLeftBytes || pass == dirtyPasses || prev >= 0 && n >= prev {
			return left, nil
		}
		prev = n
		if err := m.copyTop(p, dirty, left, false); err != nil {
			return nil, err
		}
	}
}

// leftBytes estimates what copying left costs: the dirty units of a
// cluster the parent holds, the whole cluster otherwise.
func (m *onlineMerge) leftBytes(p *pairCopy, dirty *dirtySet, left []dirtyCluster) int64 {
	var n int64
	for _, d := range left {
		if p.dstBAT[d.vc] != 0 {
			n += int64(bits.OnesCount64(d.mask)) * dirty.unit
		} else {
			n += m.c.cs
		}
	}
	return n
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

// copyTop copies the clusters todo the top holds, each under the read
// lock (the chain's shape cannot change under it). In the first pass
// (whole) each cluster is copied whole, its dirty bits cleared before it
// is read (see the comment at the top). Batches end (a sync of the
// parent) outside the lock.
func (m *onlineMerge) copyTop(p *pairCopy, dirty *dirtySet, todo []dirtyCluster, whole bool) error {
	for _, d := range todo {
		if err := m.copyTopCluster(p, dirty, d, whole); err != nil {
			return err
		}
		if p.batchFull() {
			if err := p.endBatch(); err != nil {
				return err
			}
			if m.progress != nil {
				m.progress(p.done, max(p.total, p.done))
			}
		}
	}
	return nil
}

func (m *onlineMerge) copyTopCluster(p *pairCopy, dirty *dirtySet, d dirtyCluster, whole bool) error {
	c := m.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := m.checkShape(); err != nil {
		return err
	}
	if whole {
		dirty.take(d.vc)
	}
	return m.copyDirty(p, dirty.unit, d, whole)
}

// copyDirty brings the parent's copy of cluster d.vc up to date with the
// top. Where the parent holds the cluster, only the dirty units need to go:
// either the parent has the copy of an earlier pass, or the top's cluster
// was copied up from the parent (the level right below it) after the first
// pass and differs from it by what was written since. The caller holds
// c.mu.
func (m *onlineMerge) copyDirty(p *pairCopy, unit int64, d dirtyCluster, whole bool) error {
	c := m.c
	loc, ok := c.m.get(d.vc)
	if !ok || loc.level != len(c.deltas)-1 {
		return nil
	}
	dst := p.dstBAT[d.vc]
	if whole || dst == 0 {
		return p.copyCluster(d.vc, loc.entry, dst)
	}
	if err := p.checkSrc(d.vc, loc.entry); err != nil {
		return err
	}
	srcOff, dstOff := p.src.h.clusterOffset(loc.entry), p.dst.h.clusterOffset(dst)
	for mask := d.mask; mask != 0; {
		first := int64(bits.TrailingZeros64(mask))
		n := int64(bits.TrailingZeros64(^(mask >> first)))
		lo, hi := first*unit, min(c.cs, (first+n)*unit)
		if lo >= hi {
			break
		}
		b := p.buf[lo:hi]
		if _, err := p.src.f.ReadAt(b, srcOff+lo); err != nil {
			return fmt.Errorf("read %s: %w", p.src.path, err)
		}
		if err := writeDelta(p.dst, b, dstOff+lo); err != nil {
			return err
		}
		p.copied += hi - lo
		p.batchBytes += hi - lo
		if first+n >= 64 {
			break
		}
		mask &^= (uint64(1)<<n - 1) << first
	}
	return nil
}

// switchTop finishes the copy with I/O drained and makes the parent the
// writable top; if record fails the chain stays as it was.
func (m *onlineMerge) switchTop(p *pairCopy, dirty *dirtySet, left []dirtyCluster) error {
	c := m.c
	return m.switchOver(p.dstBAT, p.dst, func() error {
		if err := c.commit(); err != nil { // nothing pending in the top from here on
			return err
		}
		for _, d := range append(left, dirty.drain()...) {
			if err := m.copyDirty(p, dirty.unit, d, false); err != nil {
				return c.note(err)
			}
		}
		if err := p.endBatch(); err != nil {
			return c.note(err)
		}
		return m.checkCopied(p.dstBAT)
	})
}
