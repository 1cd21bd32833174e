package volume

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The content model of the merge tests: every volume and snapshot shows a
// view (cluster -> content, fakeDelta). Deletes and the merges they cause
// must leave every live volume's and snapshot's view as it was.

// views returns the view of every live volume and snapshot, by ID.
func (e *env) views(t *testing.T) map[string]map[int]string {
	t.Helper()
	out := map[string]map[int]string{}
	for _, c := range e.chains(t) {
		view, err := fakeView(c.deltas)
		if err != nil {
			t.Fatalf("view of %s%s: %v", c.volumeID, c.snapshotID, err)
		}
		out[c.volumeID+c.snapshotID] = view
	}
	return out
}

func (e *env) chains(t *testing.T) []chainRef {
	t.Helper()
	chains, err := e.m.forest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return chains
}

func (e *env) write(t *testing.T, volID string, vc int, content string) {
	t.Helper()
	if err := e.store.write(e.m.volDir(volID), vc, content); err != nil {
		t.Fatal(err)
	}
}

func (e *env) depth(t *testing.T, volID string) int {
	t.Helper()
	d, err := readDesc(e.m.volDir(volID))
	if err != nil {
		t.Fatal(err)
	}
	return len(d.Chain)
}

// checkMerged verifies that every live object shows what want says, and
// that nothing is left to merge but pairs several volumes share.
func (e *env) checkMerged(t *testing.T, want map[string]map[int]string) {
	t.Helper()
	e.checkConsistent(t)
	got := e.views(t)
	for id, view := range got {
		if w, ok := want[id]; !ok || !maps.Equal(view, w) {
			t.Errorf("%s shows %v, want %v", id, view, w)
		}
	}
	for _, p := range planMerges(e.chains(t), e.m.inPool) {
		if !p.shared {
			t.Errorf("left unmerged: %s under %s (volume %q, snapshots %v)",
				filepath.Base(p.child), filepath.Base(p.parent), p.volumeID, p.snapshots)
		}
	}
	if n := listNames(t, e.m.mergesDir()); len(n) != 0 {
		t.Errorf("merge intents left: %v", n)
	}
}

// TestRetentionLoopKeepsChainsShort is the user: 40 rounds of
// overwrite, snapshot, delete the previous snapshot. The volume's depth
// stays at 2 (one live snapshot + the top), the pool holds as many deltas,
// and the newest snapshot shows what was written before it.
func TestRetentionLoopKeepsChainsShort(t *testing.T) {
	for _, attached := range []bool{false, true} {
		t.Run(fmt.Sprintf("attached=%v", attached), func(t *testing.T) {
			e := newEnvAt(t, memTempDir(t))
			v := e.create(t, "v", 64*MiB)
			if attached {
				if _, err := e.att.Attach(ctx, e.m.volDir(v.ID)); err != nil {
					t.Fatal(err)
				}
			}
			e.write(t, v.ID, 7, "static")
			var prev Snapshot
			for round := range 40 {
				e.write(t, v.ID, 0, fmt.Sprint("round ", round))
				s := e.snap(t, v.ID, fmt.Sprint("s", round))
				if round > 0 {
					if err := e.m.DeleteSnapshot(ctx, prev.ID); err != nil {
						t.Fatal(err)
					}
				}
				prev = s
				if d := e.depth(t, v.ID); d > 3 {
					t.Fatalf("round %d: depth %d", round, d)
				}
			}
			if d, n := e.depth(t, v.ID), len(listNames(t, e.m.deltasDir())); d != 2 || n != 2 {
				t.Fatalf("depth %d and %d pool deltas after 40 rounds, want 2 and 2", d, n)
			}
			want := map[int]string{0: "round 39", 7: "static"}
			e.checkMerged(t, map[string]map[int]string{v.ID: want, prev.ID: want})
			st := e.m.MergeStats()
			online, offline := st.Online, st.Offline
			if !attached {
				online, offline = offline, online
			}
			if online != 39 || offline != 0 {
				t.Fatalf("merges %+v, want 39 all %s", st, map[bool]string{true: "online", false: "offline"}[attached])
			}
		})
	}
}

// TestMergeWaitsForNoVolumeSharedPair: a clone shares its source's frozen
// deltas; the pair of them is not merged while two volumes read it, and is
// once the clone is gone.
func TestMergeWaitsForNoVolumeSharedPair(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	e.write(t, v.ID, 0, "a")
	s := e.snap(t, v.ID, "s")
	e.write(t, v.ID, 1, "b")
	c, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "c", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if d := e.depth(t, v.ID); d != 3 {
		t.Fatalf("depth %d: the pair V shares with its clone was merged", d)
	}
	if st := e.m.MergeStats(); st.Pending != 1 || st.Offline != 0 {
		t.Fatalf("stats %+v, want one pending pair and no merge", st)
	}
	want := e.views(t)
	if err := e.m.DeleteVolume(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	delete(want, c.ID)
	if d := e.depth(t, v.ID); d != 1 {
		t.Fatalf("depth %d after the clone went, want 1", d)
	}
	e.checkMerged(t, want)
}

// TestMergeTakesKeysAndRetriesWhatIsBusy: a merge whose volume is busy is
// put off, DeleteSnapshot still returns, and the background merger does it
// later.
func TestMergeTakesKeysAndRetriesWhatIsBusy(t *testing.T) {
	e := newEnv(t)
	e.m.Close()
	m, err := Open(ctx, Options{Root: e.root, Store: e.store, Attacher: e.att, Mounter: e.mnt, SweepGrace: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e.m = m
	m.merges.mu.Lock()
	m.merges.retryMin = 50 * time.Millisecond
	m.merges.mu.Unlock()
	v := e.create(t, "v", MiB)
	e.write(t, v.ID, 0, "a")
	s := e.snap(t, v.ID, "s")
	unlock, err := m.lockKey(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if d := e.depth(t, v.ID); d != 2 {
		t.Fatalf("merged while the volume was busy (depth %d)", d)
	}
	unlock()
	deadline := time.Now().Add(30 * time.Second)
	for e.depth(t, v.ID) != 1 || m.MergeStats().Offline != 1 { // the stats follow the switch
		if time.Now().After(deadline) {
			t.Fatalf("not merged after the volume was free again: %+v", m.MergeStats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := m.MergeStats(); st.Deferred == 0 || st.Offline != 1 {
		t.Fatalf("stats %+v, want a deferred and then a done merge", st)
	}
	e.checkMerged(t, map[string]map[int]string{v.ID: {0: "a"}})
}

// TestMergeOnlineWhenAttached: the pair of an attached volume is merged by
// its serving process, never by the store.
func TestMergeOnlineWhenAttached(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := e.m.volDir(v.ID)
	e.write(t, v.ID, 0, "a")
	s := e.snap(t, v.ID, "s")
	e.write(t, v.ID, 1, "b")
	if _, err := e.att.Attach(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if e.att.merges != 1 || e.store.called("MergeDir") != 0 {
		t.Fatalf("online merges %d, store merges %d", e.att.merges, e.store.called("MergeDir"))
	}
	st := e.m.MergeStats()
	if st.Online != 1 || st.MaxPause != time.Millisecond {
		t.Fatalf("stats %+v", st)
	}
	e.checkMerged(t, map[string]map[int]string{v.ID: {0: "a", 1: "b"}})
}

// TestMergeFailureKeepsEverything: a merge that fails leaves every chain
// and file as it was (and an intent the next pass drops); it is done later.
func TestMergeFailureKeepsEverything(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	e.write(t, v.ID, 0, "a")
	s := e.snap(t, v.ID, "s")
	e.store.fail["MergeDir"] = fmt.Errorf("disk on fire")
	if err := e.m.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if st := e.m.MergeStats(); st.Failed != 1 || e.depth(t, v.ID) != 2 {
		t.Fatalf("stats %+v, depth %d", st, e.depth(t, v.ID))
	}
	e.checkConsistent(t)
	delete(e.store.fail, "MergeDir")
	e.reopen(t) // the startup pass
	e.checkMerged(t, map[string]map[int]string{v.ID: {0: "a"}})
	if d := e.depth(t, v.ID); d != 1 {
		t.Fatalf("depth %d", d)
	}
}

func TestPlanMerges(t *testing.T) {
	p := func(n string) string { return "/pool/" + n }
	chains := []chainRef{
		{volumeID: "V", deltas: []string{p("a"), p("b"), p("c"), p("top")}},
		{snapshotID: "S1", deltas: []string{p("a")}},
		{snapshotID: "S3", deltas: []string{p("a"), p("b"), p("c")}},
		{volumeID: "W", deltas: []string{p("x"), p("y"), p("wtop")}},
		{volumeID: "W2", deltas: []string{p("x"), p("y"), p("w2top")}},
		{volumeID: "I", deltas: []string{"/vol/I/root.hds", p("itop")}},
	}
	inPool := func(s string) bool { return strings.HasPrefix(s, "/pool/") }
	var got []string
	for _, pr := range planMerges(chains, inPool) {
		got = append(got, fmt.Sprintf("%s>%s v=%s s=%v shared=%v", filepath.Base(pr.parent), filepath.Base(pr.child), pr.volumeID, pr.snapshots, pr.shared))
	}
	want := []string{
		"b>c v=V s=[S3] shared=false", // a is S1's tip, c is S3's, y a branch point
		"x>y v=W s=[] shared=true",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("plan\n%v\nwant\n%v", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, changed := withoutDelta([]string{"a", "b", "c"}, "b", "c"); !changed {
		t.Fatal("withoutDelta")
	}
	if c, _ := withoutDelta([]string{"a", "b", "c"}, "c", "b"); !slices.Equal(c, []string{"a", "c"}) {
		t.Fatalf("withoutDelta up: %v", c)
	}
}
