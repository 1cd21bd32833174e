package volume

import (
	"fmt"
	"maps"
	"os"
	"sync"
	"testing"
)

// permutations of n indexes, for "delete in every order" tests.
func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

// buildGraph builds: volume V, snapshot S of V, R restored from S, clone C of
// V, clone CC of C, snapshot S2 of C, with data written at every stage so
// that each object shows a view of its own. Returns a delete func per object.
func buildGraph(t *testing.T, e *env) (names []string, del []func() error) {
	t.Helper()
	v := e.create(t, "v", 4*MiB)
	e.write(t, v.ID, 0, "v0")
	e.write(t, v.ID, 1, "v1")
	s := e.snap(t, v.ID, "s")
	e.write(t, v.ID, 1, "v1b")
	e.write(t, v.ID, 2, "v2")
	r, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "r", SourceSnapshotID: s.ID, RequiredBytes: 8 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	e.write(t, r.ID, 3, "r3")
	c, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "c", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.write(t, v.ID, 0, "v0c")
	e.write(t, c.ID, 2, "c2")
	cc, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "cc", SourceVolumeID: c.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.write(t, cc.ID, 4, "cc4")
	e.write(t, c.ID, 1, "c1")
	s2 := e.snap(t, c.ID, "s2")
	e.write(t, c.ID, 5, "c5")
	if r.CapacityBytes != 8*MiB || c.CapacityBytes != 4*MiB || c.SourceVolumeID != v.ID {
		t.Fatalf("restore/clone sizes: %+v %+v", r, c)
	}
	vol := func(id string) func() error { return func() error { return e.m.DeleteVolume(ctx, id) } }
	snp := func(id string) func() error { return func() error { return e.m.DeleteSnapshot(ctx, id) } }
	return []string{"V", "S", "R", "C", "CC", "S2"},
		[]func() error{vol(v.ID), snp(s.ID), vol(r.ID), vol(c.ID), vol(cc.ID), snp(s2.ID)}
}

// TestGCInEveryDeleteOrder deletes the six objects of the data
// graph in all 720 orders. After every delete (and the merges it causes)
// every live volume and snapshot shows its data unchanged, nothing
// referenced is missing, nothing unreferenced is left, and no delta is left
// unmerged unless two volumes share it; at the end the pool is empty.
func TestGCInEveryDeleteOrder(t *testing.T) {
	merges := 0
	for _, order := range permutations(6) {
		e := newEnvAt(t, memTempDir(t))
		names, del := buildGraph(t, e)
		want := e.views(t)
		trace := ""
		for _, i := range order {
			trace += names[i] + " "
			if err := del[i](); err != nil {
				t.Fatalf("order %s: %v", trace, err)
			}
			maps.DeleteFunc(want, func(id string, _ map[int]string) bool {
				_, err1 := e.m.GetVolume(ctx, id)
				_, err2 := e.m.GetSnapshot(ctx, id)
				return err1 != nil && err2 != nil
			})
			e.checkMerged(t, want)
			if t.Failed() {
				t.Fatalf("after deleting %s", trace)
			}
		}
		if n := listNames(t, e.m.deltasDir()); len(n) != 0 {
			t.Fatalf("order %s: deltas left %v", trace, n)
		}
		st := e.m.MergeStats()
		merges += int(st.Offline + st.Online)
		if st.Failed != 0 {
			t.Fatalf("order %s: %d merges failed", trace, st.Failed)
		}
	}
	t.Logf("%d merges over 720 orders", merges)
	if merges == 0 {
		t.Fatal("no merge happened")
	}
}

func TestRestoredVolumeOutlivesSnapshotAndSource(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	s := e.snap(t, v.ID, "s")
	if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	r, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "r", SourceSnapshotID: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	d, err := readDesc(e.m.volDir(r.ID))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Chain {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("restored chain lost %s", p)
		}
	}
	_, err = e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "r2", SourceSnapshotID: s.ID})
	wantErr(t, err, ErrNotFound)
	e.checkConsistent(t)
}

func TestSweepRemovesOrphansButKeepsUnknown(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	orphanDir := e.m.volDir("vol-" + hex32)
	if err := os.MkdirAll(orphanDir, 0o750); err != nil {
		t.Fatal(err)
	}
	orphan := e.m.deltaPath(hex32 + ".hds")
	tmp := orphan + ".tmp-1"
	foreign := e.m.deltaPath("README")
	for _, p := range []string{orphan, tmp, foreign} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := e.m.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.RemovedVolumeDirs) != 1 || len(rep.RemovedDeltas) != 2 || len(rep.Unknown) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Fatal("sweep removed a file it did not create")
	}
	os.Remove(foreign)
	if _, err := e.m.GetVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkConsistent(t)
}

func TestSweepGraceProtectsFreshDeltas(t *testing.T) {
	e := newEnv(t)
	e.m.grace = DefaultSweepGrace
	orphan := e.m.deltaPath(hex32 + ".hds")
	if err := os.WriteFile(orphan, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatal("fresh delta swept despite grace")
	}
}

func TestSweepSkipsDeltasWhenAChainIsUnreadable(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	orphan := e.m.deltaPath(hex32 + ".hds")
	if err := os.WriteFile(orphan, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.m.volDir(v.ID) + "/" + descName); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Sweep(ctx); err == nil {
		t.Fatal("sweep with an unreadable chain reported success")
	}
	if n := len(listNames(t, e.m.deltasDir())); n != 2 {
		t.Fatalf("sweep deleted deltas without a complete reference set (%d left)", n)
	}
}

// TestConcurrentCreateDeleteSweep runs creators, deleters and sweeps together; with
// -race this also checks the locking. The GC lock must keep sweeps from eating the
// files of in-flight creates.
func TestConcurrentCreateDeleteSweep(t *testing.T) {
	e := newEnv(t)
	base := e.create(t, "base", MiB)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 4 {
		wg.Go(func() {
			for i := range 5 {
				name := fmt.Sprintf("w%d-%d", w, i)
				req := CreateVolumeRequest{Name: name, RequiredBytes: MiB}
				if i%2 == 1 {
					req = CreateVolumeRequest{Name: name, SourceVolumeID: base.ID}
				}
				v, err := e.m.CreateVolume(ctx, req)
				if err != nil {
					errs <- err
					return
				}
				s, err := e.m.CreateSnapshot(ctx, v.ID, name+"-s")
				if err == nil {
					err = e.m.DeleteVolume(ctx, v.ID)
				}
				if err == nil {
					err = e.m.DeleteSnapshot(ctx, s.ID)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := e.m.Sweep(ctx); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	e.checkConsistent(t)
}
