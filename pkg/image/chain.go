package image

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// Chain is an ordered stack of deltas, bottom first; the top one takes writes
// unless the chain is read-only. Reads of a cluster come from the highest
// delta that holds it (zeros if none does), through a flattened map so depth
// does not change the cost. Safe for concurrent use.
type Chain struct {
	// mu is read-locked by every I/O and write-locked by operations that
	// change the shape of the chain (Snapshot, Grow, Close).
	mu       sync.RWMutex
	fs       FS
	deltas   []*Delta
	m        *clusterMap
	size     int64
	cs       int64
	readOnly bool
	closed   bool
	merging  atomic.Bool // one Merge at a time
	// dirty, while an online merge copies the top down, records the
	// clusters written since (see merge_topdown.go).
	dirty atomic.Pointer[dirtySet]

	// failed holds the sticky error (wrapping ErrSyncFailed) once a sync or
	// metadata write of a delta failed; see Err.
	failed atomic.Pointer[error]

	// stripes serialise allocation of the same virtual cluster.
	stripes [256]sync.Mutex

	pend    pendingBAT      // allocations the next commit writes to the BAT
	journal *PendingJournal // pend, outliving the process (journal.go); nil: none
	group   groupCommit     // concurrent flushes share commits
	bufs    sync.Pool       // *[]byte of one cluster, aligned for direct I/O (copy-up)
}

// ChainOptions configures OpenChain.
type ChainOptions struct {
	FS       FS   // nil: the real file system with direct I/O where possible
	ReadOnly bool // open the top read-only too
	// Journal, if set on a writable open, is replayed onto the top first
	// and then records the chain's pending allocations (journal.go). The
	// caller closes it after the chain.
	Journal *PendingJournal
}

// OpenChain opens the delta files paths (bottom..top).
func OpenChain(paths []string, opts ChainOptions) (*Chain, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: a chain needs at least one delta", ErrInvalid)
	}
	if opts.FS == nil {
		opts.FS = NewOSFS(true)
	}
	c := &Chain{fs: opts.FS, readOnly: opts.ReadOnly}
	c.pend.dirty = map[int64]struct{}{}
	if opts.Journal != nil && !opts.ReadOnly {
		if err := replayJournal(opts.FS, paths[len(paths)-1], opts.Journal); err != nil {
			return nil, err
		}
	}
	for i, p := range paths {
		writable := i == len(paths)-1 && !opts.ReadOnly
		d, err := openDelta(opts.FS, p, writable)
		if err != nil {
			c.closeDeltas()
			return nil, err
		}
		c.deltas = append(c.deltas, d)
	}
	if err := c.buildMap(); err != nil {
		c.closeDeltas()
		return nil, err
	}
	if opts.Journal != nil && !opts.ReadOnly {
		c.bindJournal(opts.Journal)
	}
	return c, nil
}

func (c *Chain) buildMap() error {
	top := c.deltas[len(c.deltas)-1]
	c.cs = top.h.ClusterSize()
	c.size = top.h.Size()
	c.m = newClusterMap(top.h.BATEntries)
	for level, d := range c.deltas {
		if d.h.ClusterSize() != c.cs {
			return fmt.Errorf("%w: delta %s has %d-byte clusters, the top has %d", ErrCorrupt, d.path, d.h.ClusterSize(), c.cs)
		}
		if err := c.loadDelta(level, d, top.h.BATEntries); err != nil {
			return fmt.Errorf("delta %s: %w", d.path, err)
		}
	}
	return nil
}

func (c *Chain) loadDelta(level int, d *Delta, limit uint32) error {
	fileSize, err := d.f.Size()
	if err != nil {
		return err
	}
	// Two entries sharing a cluster would let a write to one change the other.
	used := newBitmap(fileSize / d.h.ClusterSize())
	err = d.forEachEntry(func(vc, entry uint32) error {
		if err := d.entryError(vc, entry, fileSize); err != nil {
			return err
		}
		if pc := d.h.clusterOffset(entry) / d.h.ClusterSize(); d.h.Version == 2 && used.testAndSet(pc) {
			return fmt.Errorf("%w: BAT entry %d points at a cluster another entry uses", ErrCorrupt, vc)
		}
		if vc < limit {
			c.m.set(vc, location{level: level, entry: entry})
		}
		return nil
	})
	if err == nil && d.writable {
		err = d.findFree(used, fileSize)
	}
	return err
}

// Size returns the virtual size in bytes.
func (c *Chain) Size() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.size
}

// ClusterSize returns the cluster size in bytes.
func (c *Chain) ClusterSize() int64 { return c.cs }

// Depth returns the number of deltas.
func (c *Chain) Depth() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.deltas)
}

// Deltas returns the delta files, bottom..top.
func (c *Chain) Deltas() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, len(c.deltas))
	for i, d := range c.deltas {
		out[i] = d.path
	}
	return out
}

func (c *Chain) top() *Delta { return c.deltas[len(c.deltas)-1] }

// span calls fn for each cluster-bounded piece of [off, off+n).
func (c *Chain) span(off int64, n int, fn func(vc uint32, inner int64, lo, hi int) error) error {
	for done := 0; done < n; {
		pos := off + int64(done)
		inner := pos % c.cs
		step := int(min(int64(n-done), c.cs-inner))
		if err := fn(uint32(pos/c.cs), inner, done, done+step); err != nil {
			return err
		}
		done += step
	}
	return nil
}

// ReadAt reads from the virtual disk. Reads past the end return io.EOF.
func (c *Chain) ReadAt(p []byte, off int64) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", ErrInvalid)
	}
	if off >= c.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), c.size-off))
	err := c.runs(off, n, func(r run) error {
		if !r.held {
			clear(p[r.lo:r.hi])
			return nil
		}
		d := c.deltas[r.loc.level]
		if _, err := d.f.ReadAt(p[r.lo:r.hi], r.fileOff); err != nil {
			return fmt.Errorf("read %s: %w", d.path, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes to the virtual disk. A write to a cluster the top does not
// hold allocates one; a partial write copies the rest of the cluster up first.
func (c *Chain) WriteAt(p []byte, off int64) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.checkWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	top, topLevel := c.top(), len(c.deltas)-1
	err := c.runs(off, len(p), func(r run) error {
		if r.held && r.loc.level == topLevel { // overwrite: one request
			return writeDelta(top, p[r.lo:r.hi], r.fileOff)
		}
		return c.span(off+int64(r.lo), r.hi-r.lo, func(vc uint32, inner int64, lo, hi int) error {
			return c.writeCluster(p[r.lo+lo:r.lo+hi], vc, inner)
		})
	})
	c.markDirty(off, int64(len(p))) // after the write: see dirtySet
	if err != nil {
		return 0, c.note(err)
	}
	return len(p), nil
}

// run is a piece of an I/O that one delta can serve in one request:
// clusters consecutive in the virtual disk and in that delta's file (a
// sequential write lays them out so), or held by no delta.
type run struct {
	held    bool     // some delta holds it (else it reads as zeros)
	loc     location // of its first cluster
	fileOff int64    // where it starts in that delta's file
	lo, hi  int      // the piece of the caller's buffer
}

// runs calls fn for each maximal run of [off, off+n), in order.
func (c *Chain) runs(off int64, n int, fn func(run) error) error {
	var cur run
	have := false
	err := c.span(off, n, func(vc uint32, inner int64, lo, hi int) error {
		loc, held := c.m.get(vc)
		var fileOff int64
		if held {
			fileOff = c.deltas[loc.level].h.clusterOffset(loc.entry) + inner
		}
		if have && held == cur.held && (!held || loc.level == cur.loc.level && fileOff == cur.fileOff+int64(cur.hi-cur.lo)) {
			cur.hi = hi
			return nil
		}
		if have {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur, have = run{held: held, loc: loc, fileOff: fileOff, lo: lo, hi: hi}, true
		return nil
	})
	if err == nil && have {
		err = fn(cur)
	}
	return err
}

func (c *Chain) checkWrite(off, n int64) error {
	if err := c.checkModify(); err != nil {
		return err
	}
	if off < 0 || n < 0 || off > c.size-n { // never off+n: it can overflow
		return fmt.Errorf("%w: write of %d bytes at %d outside the %d-byte disk", ErrInvalid, n, off, c.size)
	}
	return nil
}

// checkModify says why the chain cannot be changed, or nil.
func (c *Chain) checkModify() error {
	switch {
	case c.closed:
		return ErrClosed
	case c.readOnly:
		return ErrReadOnly
	}
	if err := c.Err(); err != nil {
		return fmt.Errorf("chain failed earlier: %w", err)
	}
	return nil
}

// Err returns the sticky error of the chain (wrapping ErrSyncFailed) once a
// sync or a metadata write of one of its deltas has failed, else nil. From
// then on writes, discards, flushes, snapshots and grows fail; reads go on.
// Only closing the image, checking it and opening it again clears it.
func (c *Chain) Err() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// note records err as the chain's sticky error if it is a sync failure, and
// returns it.
func (c *Chain) note(err error) error {
	if errors.Is(err, ErrSyncFailed) {
		if c.failed.CompareAndSwap(nil, &err) && c.journal != nil {
			c.journal.fail()
		}
	}
	return err
}

// writeCluster writes p at inner into cluster vc, which the top did not
// hold when WriteAt looked it up (runs), allocating it under vc's stripe.
func (c *Chain) writeCluster(p []byte, vc uint32, inner int64) error {
	top := c.top()
	stripe := &c.stripes[vc%uint32(len(c.stripes))]
	stripe.Lock()
	defer stripe.Unlock()
	loc, ok := c.m.get(vc)
	if ok && loc.level == len(c.deltas)-1 { // allocated since the lookup
		return writeDelta(top, p, top.h.clusterOffset(loc.entry)+inner)
	}
	return c.allocateAndWrite(top, vc, p, inner, loc, ok)
}

// Flush makes every completed write durable: data, and the BAT entries of
// the clusters allocated since the last flush (group commit: concurrent
// flushes share the work).
func (c *Chain) Flush() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.readOnly && !c.closed {
		return nil
	}
	if err := c.checkModify(); err != nil {
		return err
	}
	if err := c.group.do(c.commit); err != nil {
		return err
	}
	if err := c.Err(); err != nil { // a commit we shared failed
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// Close flushes, clears the in-use mark of the top and closes every delta.
// A failed chain (Err) keeps the mark: the next open checks the image.
func (c *Chain) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var err error
	if !c.readOnly && c.Err() == nil {
		err = c.commit()
	}
	if err == nil && c.journal != nil && c.Err() == nil {
		c.journal.clear() // all in the BAT
	}
	return errors.Join(err, c.closeDeltas())
}

func (c *Chain) closeDeltas() error {
	var errs []error
	for _, d := range c.deltas {
		errs = append(errs, c.note(d.close(c.Err() == nil)))
	}
	return errors.Join(errs...)
}
