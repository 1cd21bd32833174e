package image

import "sync/atomic"

// clusterMap is the flattened view of a chain: for each virtual cluster, which
// delta holds it and where. A lookup is two atomic loads whatever the chain
// depth. Memory is allocated in chunks only where some delta has data, so a
// sparse 16 TiB image costs little.
//
// An entry packs (level+1)<<32 | physical BAT value; 0 means unallocated in
// every delta (reads as zeros). Two high bits mark an entry of the top that
// is not in its on-disk BAT yet (see commit.go): pendingBit, and the parity
// of the commit epoch it belongs to.
type clusterMap struct {
	chunks []atomic.Pointer[mapChunk] // replaced only under the chain's write lock
}

const chunkShift = 10

const (
	pendingBit = uint64(1) << 62
	parityBit  = uint64(1) << 63
	flagBits   = pendingBit | parityBit
)

type mapChunk [1 << chunkShift]atomic.Uint64

type location struct {
	level int    // index into the chain, bottom = 0
	entry uint32 // BAT value in that delta
}

func newClusterMap(clusters uint32) *clusterMap {
	m := &clusterMap{}
	m.grow(clusters)
	return m
}

// grow makes room for clusters entries. Callers hold the chain's write lock.
func (m *clusterMap) grow(clusters uint32) {
	n := int((uint64(clusters) + (1 << chunkShift) - 1) >> chunkShift)
	if n <= len(m.chunks) {
		return
	}
	chunks := make([]atomic.Pointer[mapChunk], n)
	for i := range m.chunks {
		chunks[i].Store(m.chunks[i].Load())
	}
	m.chunks = chunks
}

func (m *clusterMap) get(vc uint32) (location, bool) {
	i := int(vc >> chunkShift)
	if i >= len(m.chunks) {
		return location{}, false
	}
	c := m.chunks[i].Load()
	if c == nil {
		return location{}, false
	}
	v := c[vc&(1<<chunkShift-1)].Load() &^ flagBits
	if v == 0 {
		return location{}, false
	}
	return location{level: int(v>>32) - 1, entry: uint32(v)}, true
}

// raw returns vc's packed entry with its flags (0: unallocated).
func (m *clusterMap) raw(vc uint32) uint64 {
	i := int(vc >> chunkShift)
	if i >= len(m.chunks) {
		return 0
	}
	if c := m.chunks[i].Load(); c != nil {
		return c[vc&(1<<chunkShift-1)].Load()
	}
	return 0
}

func unpack(v uint64) location {
	v &^= flagBits
	return location{level: int(v>>32) - 1, entry: uint32(v)}
}

// set records where vc lives. Concurrent sets to different clusters are safe;
// callers serialise sets to the same cluster.
func (m *clusterMap) set(vc uint32, loc location) {
	m.store(vc, uint64(loc.level+1)<<32|uint64(loc.entry))
}

// setPending records a top entry that is not in the on-disk BAT yet, as
// part of the commit epoch with the given parity (0 or 1).
func (m *clusterMap) setPending(vc uint32, loc location, parity uint64) {
	m.store(vc, uint64(loc.level+1)<<32|uint64(loc.entry)|pendingBit|parity*parityBit)
}

// clearPending marks vc's entry as on disk if it is pending with parity.
func (m *clusterMap) clearPending(vc uint32, parity uint64) {
	c := m.chunks[int(vc>>chunkShift)].Load()
	if c == nil {
		return
	}
	e := &c[vc&(1<<chunkShift-1)]
	for {
		v := e.Load()
		if v&pendingBit == 0 || (v&parityBit != 0) != (parity == 1) {
			return
		}
		if e.CompareAndSwap(v, v&^flagBits) {
			return
		}
	}
}

func (m *clusterMap) store(vc uint32, v uint64) {
	i := int(vc >> chunkShift)
	c := m.chunks[i].Load()
	if c == nil {
		fresh := new(mapChunk)
		if m.chunks[i].CompareAndSwap(nil, fresh) {
			c = fresh
		} else {
			c = m.chunks[i].Load()
		}
	}
	c[vc&(1<<chunkShift-1)].Store(v)
}

func (m *clusterMap) clear(vc uint32) {
	i := int(vc >> chunkShift)
	if c := m.chunks[i].Load(); c != nil {
		c[vc&(1<<chunkShift-1)].Store(0)
	}
}
