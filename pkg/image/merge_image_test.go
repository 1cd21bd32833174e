package image

import (
	"path/filepath"
	"slices"
	"testing"
)

// TestMergedDescriptor: after a merge the parent's snapshot GUID is gone
// and the child's GUID names the kept file, in both directions; a chain
// that does not match the descriptor's result is refused.
func TestMergedDescriptor(t *testing.T) {
	dir := "/img"
	d := NewDescriptor(1<<30, 1<<20, NewGUID(), "root.hds")
	d.AddTop(NewGUID(), "a.hds")
	d.AddTop(NewGUID(), "b.hds")
	chain, err := d.Chain()
	if err != nil {
		t.Fatal(err)
	}
	parent, child := chain[1], chain[2] // a.hds, b.hds (the top)
	abs := func(names ...string) []string {
		out := []string{}
		for _, n := range names {
			out = append(out, filepath.Join(dir, n))
		}
		return out
	}
	for _, c := range []struct {
		name  string
		paths []string
	}{
		{"down", abs("root.hds", "a.hds")},
		{"up", abs("root.hds", "b.hds")},
	} {
		next, err := d.merged(dir, parent, child, c.paths)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		files, _ := next.ChainFiles(dir)
		if !slices.Equal(files, c.paths) || !sameGUID(next.Snapshots.TopGUID, child.GUID) {
			t.Fatalf("%s: chain %v top %s", c.name, files, next.Snapshots.TopGUID)
		}
		if _, ok := next.image(parent.GUID); ok {
			t.Fatalf("%s: the merged snapshot %s is still in the descriptor", c.name, parent.GUID)
		}
		if err := next.validate(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	if _, err := d.merged(dir, parent, child, abs("root.hds")); err == nil {
		t.Fatal("a chain that lost both deltas was accepted")
	}
}
