package image

import (
	"context"
	"slices"
	"testing"
)

// An online merge of the top with its parent on a chain that records its
// pending allocations in a journal, then allocating writes that are never
// flushed, then a process crash (the kernel and the journal's memory live
// on): the successor's open, given the dead process's journal, finds every
// acknowledged write, and the image checks clean. Merged down, the parent
// becomes the top, so the journal must follow it at the switch (as it
// follows a snapshot's new top), or the successor ignores it as written
// for another file and reclaims the clusters of those writes as leaked.
// Merged up, the top stays the top and the journal stays bound to it.
func TestProcessCrashAfterOnlineMergeOfTop(t *testing.T) {
	for _, direction := range []MergeDirection{MergeDown, MergeUp} {
		t.Run(string(direction), func(t *testing.T) {
			const cs = crashCluster
			fsys, dir := newCrashImage(t)
			mem := newJournalMem()
			img, err := OpenDir(dir, OpenOptions{FS: fsys, Journal: memJournal(t, mem, bootA)})
			if err != nil {
				t.Fatal(err)
			}
			want := diskModel{size: 1 << 30, clusters: map[int64][]byte{}}
			write := func(off int64, p []byte) {
				t.Helper()
				if _, err := img.Chain().WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
				want.write(off, p)
			}
			// The parent: flushed, then frozen by a snapshot.
			write(0, pattern(1, cs))
			write(5*cs, pattern(2, 4096))
			if err := img.Chain().Flush(); err != nil {
				t.Fatal(err)
			}
			if _, err := img.Snapshot(SnapshotOptions{}); err != nil {
				t.Fatal(err)
			}
			// The top: a copy-up and a fresh cluster, pending when the
			// merge starts (its switch commits them).
			write(cs/2, pattern(3, 4096))
			write(7*cs, pattern(4, 4096))
			files := img.Chain().Deltas()
			st, err := img.Merge(context.Background(), files[0], files[1], PairMergeOptions{Direction: direction})
			if err != nil {
				t.Fatal(err)
			}
			if st.Direction != direction || img.Chain().Depth() != 1 {
				t.Fatalf("merged %s into a chain of %d deltas, want %s into 1", st.Direction, img.Chain().Depth(), direction)
			}
			if err := fsys.Remove(st.Dropped); err != nil { // as the serving process does
				t.Fatal(err)
			}
			// Acknowledged, never flushed: fresh clusters (one in another
			// BAT page), a partial one, an overwrite of a merged cluster.
			write(9*cs+4096, pattern(5, 4096))
			write(1500*cs, pattern(6, cs))
			write(11*cs+100, pattern(7, 5000))
			write(5*cs+8192, pattern(8, 4096))
			if h, _, err := DecodeJournal(mem); err != nil || h.Count < 3 {
				t.Fatalf("the journal holds %d entries (%v), want the 3 allocations since the merge", h.Count, err)
			}
			// The process dies: the image is abandoned without Close.
			after := fsys.reboot(keepAll)
			if err := verifyWithJournal(after, dir, []diskModel{want}, memJournal(t, slices.Clone(mem), bootA)); err != nil {
				t.Fatalf("after the process crash: %v", err)
			}
		})
	}
}
