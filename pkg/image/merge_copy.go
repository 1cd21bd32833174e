package image

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// The copy engine of every merge: it moves clusters between two deltas of
// one chain, parent below child, so that the pair reads the same at every
// step and the kept delta holds the combined view at the end.
//
//   - down (dst = parent): every cluster the child holds is written into
//     the parent, in place where the parent holds that cluster (the child
//     shadows it, so no chain through the pair sees the old data), else
//     into a new cluster whose BAT entry is written after its data is
//     synced.
//   - up (dst = child): every cluster the parent holds and the child lacks
//     is written into a new cluster of the child, data synced before the
//     BAT entry (the child then shows what the parent showed).
//
// The work is driven by the two BATs, read in chunks side by side: the
// cost is the data moved plus 4 bytes per virtual cluster, never the data
// of unallocated clusters, and memory stays bounded at any size. Holes
// inside a source cluster are not copied (File.Data).

// copyBatchBytes bounds the data written between two syncs of the
// destination: one sync per batch, not per cluster.
const copyBatchBytes = 32 << 20

// pairCopy is one run of the engine.
type pairCopy struct {
	ctx      context.Context
	src, dst *Delta
	down     bool
	progress MergeProgress
	total    int64 // estimate, for progress: whole clusters
	done     int64 // whole clusters processed (the unit of total)
	copied   int64 // data bytes written
	srcSize  int64 // the source file's size: entries are checked against it

	// skip, if not nil, is asked before each cluster is copied up (online
	// merges into the top copy through the chain instead).
	skip func(vc uint32) bool

	batch []batEntry // new clusters of this batch: entries written after the sync
	// dstBAT, if not nil, is dst's BAT kept up to date with the clusters
	// allocated (an online down merge from the top copies a cluster again).
	dstBAT []uint32
	// manualBatch: the caller ends batches (outside the chain's locks).
	manualBatch bool
	batchBytes  int64
	buf         []byte
}

type batEntry struct{ vc, entry uint32 }

// run copies every cluster the direction calls for.
func (p *pairCopy) run() error {
	p.buf = alignedBuffer(int(p.src.h.ClusterSize()))
	var err error
	if p.srcSize, err = p.src.f.Size(); err != nil {
		return err
	}
	if p.progress != nil {
		p.progress(0, p.total)
	}
	limit := p.src.h.BATEntries
	if !p.down {
		limit = min(limit, p.dst.h.BATEntries) // past the child's end nothing is visible
	}
	err = forEachPair(p.src, p.dst, limit, func(vc, s, d uint32) error {
		if s == 0 || (!p.down && d != 0) {
			return nil
		}
		if p.skip != nil && p.skip(vc) {
			return nil
		}
		return p.copyCluster(vc, s, d)
	})
	if err == nil {
		err = p.endBatch()
	}
	if err == nil && p.progress != nil {
		p.total = max(p.total, p.done) // the estimate counted whole clusters: end at 100%
		p.progress(p.total, p.total)
	}
	return err
}

// copyFiles runs p from the delta file srcPath into dstPath, opened
// writable and prepared (prepareTarget); if the copy succeeds, keep (if
// not nil) is called with the destination before it is closed.
func copyFiles(fsys FS, p *pairCopy, srcPath, dstPath string, keep func(dst *Delta) error) error {
	src, err := openDelta(fsys, srcPath, false)
	if err != nil {
		return err
	}
	defer src.close(true)
	dst, err := openDelta(fsys, dstPath, true)
	if err != nil {
		return err
	}
	p.src, p.dst = src, dst
	err = prepareTarget(p)
	if err == nil {
		err = p.run()
	}
	if err == nil && keep != nil {
		err = keep(dst)
	}
	return errors.Join(err, dst.close(!errors.Is(err, ErrSyncFailed)))
}

// report calls the progress callback, if any, with the clusters processed.
func (p *pairCopy) report() {
	if p.progress != nil {
		p.progress(p.done, max(p.total, p.done))
	}
}

// forEachPair calls fn(vc, a's entry, b's entry) for vc in [0, limit),
// reading both BATs a chunk at a time (an entry past a delta's BAT is 0).
func forEachPair(a, b *Delta, limit uint32, fn func(vc, ea, eb uint32) error) error {
	bufA := make([]byte, 4*min(batChunk, int64(limit)))
	bufB := make([]byte, len(bufA))
	for start64 := uint64(0); start64 < uint64(limit); start64 += batChunk {
		start := uint32(start64)
		n := min(uint32(batChunk), limit-start)
		if err := readBATRange(a, start, bufA[:4*n]); err != nil {
			return err
		}
		if err := readBATRange(b, start, bufB[:4*n]); err != nil {
			return err
		}
		for i := range n {
			ea := binary.LittleEndian.Uint32(bufA[4*i:])
			eb := binary.LittleEndian.Uint32(bufB[4*i:])
			if ea == 0 && eb == 0 {
				continue
			}
			if err := fn(start+i, ea, eb); err != nil {
				return err
			}
		}
	}
	return nil
}

// readBATRange fills buf with the entries from start; entries past the
// delta's BAT read as 0.
func readBATRange(d *Delta, start uint32, buf []byte) error {
	clear(buf)
	if start >= d.h.BATEntries {
		return nil
	}
	n := min(uint32(len(buf)/4), d.h.BATEntries-start)
	if _, err := d.f.ReadAt(buf[:4*n], HeaderSize+4*int64(start)); err != nil {
		return fmt.Errorf("read BAT of %s: %w", d.path, err)
	}
	return nil
}

// copyCluster makes dst's cluster vc read as src's cluster at srcEntry:
// in place at dstEntry, or in a new cluster when dstEntry is 0.
func (p *pairCopy) copyCluster(vc, srcEntry, dstEntry uint32) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	cs := p.src.h.ClusterSize()
	srcOff := p.src.h.clusterOffset(srcEntry)
	if err := p.checkSrc(vc, srcEntry); err != nil {
		return err
	}
	p.done += cs
	inPlace := dstEntry != 0
	var dstOff int64
	if inPlace {
		dstOff = p.dst.h.clusterOffset(dstEntry)
	} else {
		off, entry, err := p.dst.allocate()
		if err != nil {
			return err
		}
		dstOff = off
		p.batch = append(p.batch, batEntry{vc, entry})
		if p.dstBAT != nil {
			p.dstBAT[vc] = entry
		}
	}
	data, err := clusterData(p.src.f, srcOff, cs)
	if err != nil {
		return fmt.Errorf("find data in %s: %w", p.src.path, err)
	}
	if inPlace { // what is a hole in the source must read as zeros here too
		for _, h := range gaps(data, cs) {
			if err := p.dst.f.Punch(dstOff+h.lo, h.hi-h.lo); err != nil {
				return fmt.Errorf("punch %s: %w", p.dst.path, err)
			}
		}
	}
	for _, s := range data {
		b := p.buf[s.lo:s.hi]
		if _, err := p.src.f.ReadAt(b, srcOff+s.lo); err != nil {
			return fmt.Errorf("read %s: %w", p.src.path, err)
		}
		if err := writeDelta(p.dst, b, dstOff+s.lo); err != nil {
			return err
		}
		p.copied += s.hi - s.lo
		p.batchBytes += s.hi - s.lo
	}
	if !p.manualBatch && p.batchFull() {
		return p.endBatch()
	}
	return nil
}

func (p *pairCopy) batchFull() bool {
	return p.batchBytes >= copyBatchBytes || len(p.batch) >= batChunk
}

// checkSrc validates a source entry; a source being written (the top)
// grows, so its size is looked up again before an entry past it is bad.
func (p *pairCopy) checkSrc(vc, entry uint32) error {
	err := p.src.entryError(vc, entry, p.srcSize)
	if err != nil {
		if size, serr := p.src.f.Size(); serr == nil && size > p.srcSize {
			p.srcSize = size
			err = p.src.entryError(vc, entry, size)
		}
	}
	if err != nil {
		return fmt.Errorf("delta %s: %w", p.src.path, err)
	}
	return nil
}

// endBatch syncs the data written, then writes and syncs the BAT entries
// of the new clusters (ploop's rule: data before the entry that points at it).
func (p *pairCopy) endBatch() error {
	if p.batchBytes == 0 && len(p.batch) == 0 {
		return nil
	}
	if err := p.dst.sync(); err != nil {
		return err
	}
	if len(p.batch) > 0 {
		for _, e := range p.batch {
			if err := p.dst.setEntry(e.vc, e.entry); err != nil {
				return err
			}
		}
		if err := p.dst.sync(); err != nil {
			return err
		}
	}
	p.batch, p.batchBytes = p.batch[:0], 0
	p.report()
	return nil
}

// clusterData returns the parts of the cluster at off that may hold data,
// rounded out to the direct-I/O alignment, relative to off.
func clusterData(f File, off, cs int64) ([]span, error) {
	var out []span
	err := forEachData(f, off, off+cs, func(start, stop int64) {
		s := roundOut(span{start - off, stop - off}, cs)
		if n := len(out); n > 0 && s.lo <= out[n-1].hi {
			out[n-1].hi = max(out[n-1].hi, s.hi)
		} else {
			out = append(out, s)
		}
	})
	return out, err
}

// gaps returns the parts of [0, cs) that data (sorted, disjoint) leaves out.
func gaps(data []span, cs int64) []span {
	var out []span
	pos := int64(0)
	for _, s := range data {
		if s.lo > pos {
			out = append(out, span{pos, s.lo})
		}
		pos = s.hi
	}
	if pos < cs {
		out = append(out, span{pos, cs})
	}
	return out
}

// prepareAlloc lets dst's allocate reuse the holes its BAT does not use
// (punched clusters, what a crash left) before it grows the file.
func prepareAlloc(d *Delta) error {
	fileSize, err := d.f.Size()
	if err != nil {
		return err
	}
	used := newBitmap(fileSize/d.h.ClusterSize() + 1)
	err = d.forEachEntry(func(vc, entry uint32) error {
		if err := d.entryError(vc, entry, fileSize); err != nil {
			return fmt.Errorf("delta %s: %w", d.path, err)
		}
		used.testAndSet(d.h.clusterOffset(entry) / d.h.ClusterSize())
		return nil
	})
	if err != nil {
		return err
	}
	d.free = nil
	return d.findFree(used, fileSize)
}
