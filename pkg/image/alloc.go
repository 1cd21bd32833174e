package image

import (
	"fmt"
	"slices"
)

// copyGap: pieces of a copy-up closer together than this go in one read or
// one write. Reading or writing the bytes in between (zeros of a hole, or
// bytes the write itself replaces) costs less than another request.
const copyGap = 64 << 10

// allocateAndWrite gives vc a cluster in the top delta holding p at inner,
// with what p does not cover copied up from the delta below that holds vc
// (below, if inLower). The BAT entry stays pending: the next flush makes it
// durable after the data (commit.go).
func (c *Chain) allocateAndWrite(top *Delta, vc uint32, p []byte, inner int64, below location, inLower bool) error {
	off, entry, err := top.allocate()
	if err != nil {
		return err
	}
	if err := c.fillCluster(top, off, p, inner, below, inLower); err != nil {
		top.release(off)
		return err
	}
	return c.addPending(vc, location{level: len(c.deltas) - 1, entry: entry})
}

// span is a byte range inside a cluster.
type span struct{ lo, hi int64 }

// fillCluster writes the new cluster at off: p at inner, plus the parts of
// the lower cluster p leaves uncovered that hold data there. A hole in the
// lower delta is not copied (the new cluster reads zeros there already), a
// write of the whole cluster copies nothing, and the rest goes in as few,
// as large, aligned I/Os as the layout allows.
//
// Pieces closer than copyGap to each other or to the cluster's ends are
// written as one span, zeros in between: a small cluster is written whole.
// Its space was reserved unwritten (Delta.allocate); what is written now is
// not converted again by every later write into it, which makes the first
// writes into a fresh 64 KiB cluster cost what overwrites cost.
func (c *Chain) fillCluster(top *Delta, off int64, p []byte, inner int64, below location, inLower bool) error {
	pw := span{inner, inner + int64(len(p))}
	var data []span
	var lower *Delta
	var src int64
	if inLower && pw.hi-pw.lo < c.cs {
		lower = c.deltas[below.level]
		src = lower.h.clusterOffset(below.entry)
		var err error
		if data, err = c.lowerData(lower, src, pw); err != nil {
			return err
		}
	}
	// data and p, plus the two ends below: one allocation, and a slice of
	// its own (coalesce reorders it; data is read again below).
	all := append(make([]span, 0, len(data)+3), data...)
	if len(p) > 0 {
		all = append(all, roundOut(pw, c.cs))
	}
	if len(all) == 0 {
		return nil // an empty cluster: hides the lower one (discard)
	}
	writes := coalesce(append(all, span{0, 0}, span{c.cs, c.cs}), copyGap)
	if len(data) == 0 && len(writes) == 3 { // p alone, far from both ends
		return writeDelta(top, p, off+inner)
	}
	bp := c.clusterBuffer()
	defer c.bufs.Put(bp)
	for _, w := range writes {
		if w.lo == w.hi {
			continue // an end nothing was near
		}
		buf := (*bp)[:w.hi-w.lo]
		clear(buf)
		for _, r := range coalesce(clip(data, w), copyGap) {
			if _, err := lower.f.ReadAt(buf[r.lo-w.lo:r.hi-w.lo], src+r.lo); err != nil {
				return fmt.Errorf("copy up from %s: %w", lower.path, err)
			}
		}
		if pw.lo >= w.lo && pw.hi <= w.hi {
			copy(buf[pw.lo-w.lo:], p)
		}
		if err := writeDelta(top, buf, off+w.lo); err != nil {
			return err
		}
	}
	return nil
}

// lowerData returns the parts of the lower cluster at src that may hold
// data, minus pw, each rounded out to the direct-I/O alignment.
func (c *Chain) lowerData(lower *Delta, src int64, pw span) ([]span, error) {
	var out []span
	err := forEachData(lower.f, src, src+c.cs, func(start, stop int64) {
		for _, s := range subtract(span{start - src, stop - src}, pw) {
			out = append(out, roundOut(s, c.cs))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("find data in %s: %w", lower.path, err)
	}
	return out, nil
}

// forEachData calls fn(start, stop) for each extent of [lo, hi) that may
// hold data (File.Data), in order.
func forEachData(f File, lo, hi int64, fn func(start, stop int64)) error {
	for pos := lo; pos < hi; {
		start, stop, err := f.Data(pos, hi)
		if err != nil {
			return err
		}
		if start >= hi {
			break
		}
		if stop <= start { // a file system answering nonsense: take the rest as data
			stop = hi
		}
		fn(start, stop)
		pos = stop
	}
	return nil
}

// roundOut widens s to the direct-I/O alignment, inside a cluster of cs.
func roundOut(s span, cs int64) span {
	return span{s.lo / directAlign * directAlign, min(cs, (s.hi+directAlign-1)/directAlign*directAlign)}
}

// subtract returns s minus cut (zero, one or two spans).
func subtract(s, cut span) []span {
	if cut.hi <= s.lo || cut.lo >= s.hi || cut.lo == cut.hi {
		return []span{s}
	}
	var out []span
	if s.lo < cut.lo {
		out = append(out, span{s.lo, cut.lo})
	}
	if cut.hi < s.hi {
		out = append(out, span{cut.hi, s.hi})
	}
	return out
}

// coalesce sorts spans and merges those that overlap or lie less than gap
// apart, in place: it reuses (and reorders) the caller's slice.
func coalesce(spans []span, gap int64) []span {
	slices.SortFunc(spans, func(a, b span) int { return int(a.lo - b.lo) })
	out := spans[:0]
	for _, s := range spans {
		if n := len(out); n > 0 && s.lo-out[n-1].hi <= gap {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// clip returns the parts of spans inside w.
func clip(spans []span, w span) []span {
	var out []span
	for _, s := range spans {
		if lo, hi := max(s.lo, w.lo), min(s.hi, w.hi); lo < hi {
			out = append(out, span{lo, hi})
		}
	}
	return out
}

// clusterBuffer returns a pooled, aligned buffer of one cluster.
func (c *Chain) clusterBuffer() *[]byte {
	if v := c.bufs.Get(); v != nil {
		return v.(*[]byte)
	}
	b := alignedBuffer(int(c.cs))
	return &b
}

func writeDelta(d *Delta, p []byte, off int64) error {
	if _, err := d.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %s: %w", d.path, err)
	}
	return nil
}
