package image

import (
	"errors"
	"fmt"
)

// Discard makes [off, off+length) read back as zeros and returns the space of
// whole clusters the top holds to the file system. Clusters whose data lives
// in a lower delta get a zero cluster in the top (a hole: no space used), so
// the lower data stops showing through.
func (c *Chain) Discard(off, length int64) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.checkWrite(off, length); err != nil {
		return err
	}
	defer c.markDirty(off, length)
	for pos := off; pos < off+length; {
		vc, inner := uint32(pos/c.cs), pos%c.cs
		n := min(off+length-pos, c.cs-inner)
		if err := c.discardCluster(vc, inner, n); err != nil {
			return c.note(err)
		}
		pos += n
	}
	return nil
}

func (c *Chain) discardCluster(vc uint32, inner, n int64) error {
	top, topLevel := c.top(), len(c.deltas)-1
	stripe := &c.stripes[vc%uint32(len(c.stripes))]
	stripe.Lock()
	defer stripe.Unlock()
	loc, ok := c.m.get(vc)
	switch {
	case !ok: // zeros already
		return nil
	case loc.level == topLevel:
		if err := top.f.Punch(top.h.clusterOffset(loc.entry)+inner, n); err != nil {
			return fmt.Errorf("punch %s: %w", top.path, err)
		}
		return nil
	case n == c.cs: // whole cluster from below: an empty top cluster hides it
		return c.allocateAndWrite(top, vc, nil, 0, loc, false)
	default: // part of a lower cluster: copy up with the range zeroed
		return c.allocateAndWrite(top, vc, make([]byte, n), inner, loc, true)
	}
}

// Snapshot freezes the current top and sends new writes to a fresh empty
// delta at newTop. record, if not nil, runs once the new delta is durable and
// before any write reaches it: it records the new chain (the descriptor), and
// if it fails the chain stays as it was. The cost does not depend on how much
// data the chain holds. I/O waits while it runs.
func (c *Chain) Snapshot(newTop string, record func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkModify(); err != nil {
		return err
	}
	return c.note(c.snapshot(newTop, record))
}

func (c *Chain) snapshot(newTop string, record func() error) error {
	old := c.top()
	// The frozen delta gets every pending BAT entry first.
	if err := c.commit(); err != nil {
		return err
	}
	h, err := NewHeader(c.size, c.cs)
	if err != nil {
		return err
	}
	if err := createDelta(c.fs, newTop, h); err != nil {
		return err
	}
	nd, err := openDelta(c.fs, newTop, true)
	if err != nil {
		_ = c.fs.Remove(newTop)
		return err
	}
	// A frozen delta is closed cleanly: no reserved tail, everything it
	// holds synced.
	if err := old.trimReserve(); err != nil {
		nd.close(true)
		_ = c.fs.Remove(newTop)
		return err
	}
	if err := old.setInUse(false); err != nil {
		nd.close(true)
		_ = c.fs.Remove(newTop)
		return err
	}
	if record != nil {
		if err := record(); err != nil {
			nd.close(true)
			_ = c.fs.Remove(newTop)
			return fmt.Errorf("record snapshot: %w", errors.Join(err, old.setInUse(true)))
		}
	}
	old.writable = false
	c.deltas = append(c.deltas, nd)
	if c.journal != nil { // empty (the commit above): now for the new top
		c.bindJournal(c.journal)
	}
	return nil
}

// Grow raises the virtual size to size bytes. It never shrinks.
func (c *Chain) Grow(size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkModify(); err != nil {
		return err
	}
	if size < c.size {
		return fmt.Errorf("%w: cannot shrink from %d to %d bytes", ErrInvalid, c.size, size)
	}
	if size == c.size {
		return nil
	}
	topLevel := len(c.deltas) - 1
	// Relocation works from the on-disk BAT: pending entries go there first.
	if err := c.commit(); err != nil {
		return err
	}
	moved, err := c.top().grow(size)
	if err != nil {
		return c.note(err)
	}
	for vc, entry := range moved {
		c.m.set(vc, location{level: topLevel, entry: entry})
	}
	c.m.grow(c.top().h.BATEntries)
	c.size = size
	return nil
}
