package image

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
)

// Group-committed allocation. A block device promises durability only at a
// flush, so an allocating write does not sync: it writes its data, records
// the new BAT entry in the cluster map as pending (reads see it at once) and
// marks the BAT page that will hold it dirty. A commit then
//  1. closes the epoch: entries pending so far are the ones it commits,
//     later ones wait for the next commit;
//  2. syncs the top delta: the data every committed entry points at is
//     durable before the entry (ploop's rule);
//  3. writes the dirty BAT pages, built from the cluster map with the
//     entries of later epochs left out (still zero on disk);
//  4. syncs again, and marks the committed entries as on disk.
// A crash at any step leaves every on-disk entry pointing at synced data;
// the clusters of entries that never reached the BAT are leaked space that
// the next open reclaims (check.go). Concurrent flushes share commits.

// batPage is the unit in which dirty BAT entries are tracked and written.
const batPage = 4096

// pendingBAT is what the next commit has to write.
type pendingBAT struct {
	mu    sync.Mutex
	epoch uint64             // entries added now get parity epoch&1
	dirty map[int64]struct{} // BAT pages holding entries of the current epoch
}

func batPageOf(vc uint32) int64 { return (HeaderSize + 4*int64(vc)) / batPage }

// addPending records vc's new top cluster, not yet in the on-disk BAT, in
// the cluster map and in the journal (journal.go) with the same epoch. A
// full journal makes it commit first (a commit empties the journal of what
// it wrote). Callers hold c.mu (read) and vc's stripe.
func (c *Chain) addPending(vc uint32, loc location) error {
	for {
		c.pend.mu.Lock()
		parity := c.pend.epoch & 1
		if c.journal == nil || c.journal.add(vc, loc.entry, parity) {
			c.m.setPending(vc, loc, parity)
			c.pend.dirty[batPageOf(vc)] = struct{}{}
			c.pend.mu.Unlock()
			return nil
		}
		c.pend.mu.Unlock()
		if err := c.group.do(c.commit); err != nil {
			return err
		}
		if err := c.Err(); err != nil { // a commit we shared failed
			return err
		}
	}
}

// commit makes every write completed before it started durable, BAT
// entries included. Callers hold c.mu (read or write) and serialise
// commits (groupCommit, or the write lock).
func (c *Chain) commit() error {
	if err := c.Err(); err != nil {
		return err
	}
	top := c.top()
	c.pend.mu.Lock()
	pages, parity := c.pend.dirty, c.pend.epoch&1
	c.pend.dirty = map[int64]struct{}{}
	c.pend.epoch++
	c.pend.mu.Unlock()
	if err := top.sync(); err != nil {
		return c.note(err)
	}
	if len(pages) == 0 {
		return nil
	}
	sorted := make([]int64, 0, len(pages))
	for p := range pages {
		sorted = append(sorted, p)
	}
	slices.Sort(sorted)
	if err := c.writeBATPages(top, sorted, parity); err != nil {
		return c.note(err)
	}
	if err := top.sync(); err != nil {
		return c.note(err)
	}
	for _, p := range sorted {
		lo, hi := c.pageEntries(top, p)
		for vc := lo; vc < hi; vc++ {
			c.m.clearPending(vc, parity)
		}
	}
	if c.journal != nil {
		c.journal.commit(parity)
	}
	return nil
}

// pageEntries returns the BAT entries [lo, hi) stored in page p.
func (c *Chain) pageEntries(top *Delta, p int64) (lo, hi uint32) {
	first := max(p*batPage, HeaderSize)
	last := min((p+1)*batPage, top.h.BATBytes())
	return uint32((first - HeaderSize) / 4), uint32((last - HeaderSize) / 4)
}

// writeBATPages writes the pages (sorted), each run of consecutive pages
// in one write, with the top's entries as the cluster map has them except
// those pending in a later epoch than parity's.
func (c *Chain) writeBATPages(top *Delta, pages []int64, parity uint64) error {
	topLevel := len(c.deltas) - 1
	for len(pages) > 0 {
		n := 1
		for n < len(pages) && pages[n] == pages[0]+int64(n) {
			n++
		}
		lo, _ := c.pageEntries(top, pages[0])
		_, hi := c.pageEntries(top, pages[n-1])
		buf := alignedBuffer(int(hi-lo) * 4)
		for vc := lo; vc < hi; vc++ {
			v := c.m.raw(vc)
			if v == 0 || unpack(v).level != topLevel {
				continue // zero: not in the top
			}
			if v&pendingBit != 0 && (v&parityBit != 0) != (parity == 1) {
				continue // data not synced yet: a later commit writes it
			}
			binary.LittleEndian.PutUint32(buf[4*(vc-lo):], unpack(v).entry)
		}
		if _, err := top.f.WriteAt(buf, HeaderSize+4*int64(lo)); err != nil {
			return fmt.Errorf("%w: write BAT of %s: %w", ErrSyncFailed, top.path, err)
		}
		pages = pages[n:]
	}
	return nil
}

// groupCommit lets concurrent flushes share commits: a flush needs a commit
// that started after it was called; if one is running, it waits for it
// and then for (or runs) the next, which every caller waiting meanwhile
// shares.
type groupCommit struct {
	mu       sync.Mutex
	cond     sync.Cond
	running  bool
	started  uint64
	finished uint64
}

// do runs commit or shares one that starts after the call. An error of a
// shared run reaches the callers through the chain's sticky error.
func (g *groupCommit) do(commit func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond.L == nil {
		g.cond.L = &g.mu
	}
	need := g.started + 1
	for g.finished < need {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		n := g.started
		err := g.unlocked(commit)
		g.running = false
		g.finished = n
		g.cond.Broadcast()
		if err != nil {
			return err
		}
	}
	return nil
}

// unlocked runs commit without g.mu, which it takes back however commit
// ends (a panic included: the deferred unlock in do must find it held).
func (g *groupCommit) unlocked(commit func() error) error {
	g.mu.Unlock()
	defer g.mu.Lock()
	return commit()
}
