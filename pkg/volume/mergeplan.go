package volume

import (
	"cmp"
	"slices"
)

// The storage root holds a forest of deltas: every chain (a volume's
// descriptor, a snapshot record) is a path from a bottom delta up to its
// tip. A delta is needed as a layer of its own when it is the tip of some
// chain (a volume's writable top, a snapshot's frozen top) or when chains
// continue above it with different deltas (a branch point: a restore or a
// clone shares everything below). Any other delta P has exactly one child C,
// and every chain that contains P continues with C: P and C can become one
// delta holding their combined view, and every chain keeps its content.

// chainRef is one chain of the forest: a committed volume's descriptor or
// a snapshot record, bottom..top, as clean absolute paths.
type chainRef struct {
	volumeID   string // set for a volume's chain
	snapshotID string // set for a snapshot's chain
	deltas     []string
}

// mergePair is a delta (parent) and its only child that no chain needs
// apart: the unit of work of the merger.
type mergePair struct {
	parent, child string
	// volumeID is the one volume whose chain holds the pair ("" when only
	// snapshot chains do: their volume is gone).
	volumeID string
	// snapshots whose records hold the pair, sorted: their records are
	// rewritten once the data is merged.
	snapshots []string
	// shared: more than one volume chain holds the pair. Such a pair is not
	// merged (every serving process reading it would have to switch); it
	// becomes mergeable when the other volumes are gone.
	shared bool
}

// keys are the keyed locks a merge of the pair takes, sorted.
func (p mergePair) keys() []string {
	keys := slices.Clone(p.snapshots)
	if p.volumeID != "" {
		keys = append(keys, p.volumeID)
	}
	slices.Sort(keys)
	return keys
}

// planMerges returns the mergeable pairs of the forest, ordered by child
// path (deterministic). inPool says whether a delta is a pool file: only
// those are merged (the GC removes the dropped one). A delta whose chains
// disagree about what lies below it is left alone: chains are built on top
// of each other, so that never happens unless someone edited a descriptor.
func planMerges(chains []chainRef, inPool func(string) bool) []mergePair {
	tip := map[string]bool{}
	children := map[string]map[string]bool{}
	below := map[string]string{}
	irregular := map[string]bool{}
	for _, c := range chains {
		for i, d := range c.deltas {
			prev := ""
			if i > 0 {
				prev = c.deltas[i-1]
			}
			if p, seen := below[d]; seen && p != prev {
				irregular[d] = true
			}
			below[d] = prev
			if i == len(c.deltas)-1 {
				tip[d] = true
				continue
			}
			if children[d] == nil {
				children[d] = map[string]bool{}
			}
			children[d][c.deltas[i+1]] = true
		}
	}
	var pairs []mergePair
	for parent, kids := range children {
		if tip[parent] || len(kids) != 1 {
			continue
		}
		var child string
		for k := range kids {
			child = k
		}
		if irregular[parent] || irregular[child] || !inPool(parent) || !inPool(child) {
			continue
		}
		pairs = append(pairs, pairIn(chains, parent, child))
	}
	slices.SortFunc(pairs, func(a, b mergePair) int { return cmp.Compare(a.child, b.child) })
	return pairs
}

// pairIn collects the chains that hold parent followed by child.
func pairIn(chains []chainRef, parent, child string) mergePair {
	p := mergePair{parent: parent, child: child}
	for _, c := range chains {
		i := slices.Index(c.deltas, parent)
		if i < 0 || i+1 >= len(c.deltas) || c.deltas[i+1] != child {
			continue
		}
		switch {
		case c.snapshotID != "":
			p.snapshots = append(p.snapshots, c.snapshotID)
		case p.volumeID == "":
			p.volumeID = c.volumeID
		default:
			p.shared = true
		}
	}
	slices.Sort(p.snapshots)
	return p
}

// withoutDelta returns chain with dropped removed where it is adjacent to
// kept (the pair that was merged), and whether it changed.
func withoutDelta(chain []string, kept, dropped string) ([]string, bool) {
	for i := 0; i+1 < len(chain); i++ {
		lo, hi := chain[i], chain[i+1]
		if (lo == kept && hi == dropped) || (lo == dropped && hi == kept) {
			j := i
			if lo == kept {
				j = i + 1
			}
			return slices.Delete(slices.Clone(chain), j, j+1), true
		}
	}
	return chain, false
}
