package volume

import (
	"fmt"
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

// objects builds: volume V with data, snapshot S of V, R restored from S, clone C of
// V, clone CC of C, snapshot S2 of C. Returns a delete func per object.
func buildGraph(t *testing.T, e *env) (names []string, del []func() error) {
	t.Helper()
	v := e.create(t, "v", 4*MiB)
	s := e.snap(t, v.ID, "s")
	r, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "r", SourceSnapshotID: s.ID, RequiredBytes: 8 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "c", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "cc", SourceVolumeID: c.ID})
	if err != nil {
		t.Fatal(err)
	}
	s2 := e.snap(t, c.ID, "s2")
	if r.CapacityBytes != 8*MiB || c.CapacityBytes != 4*MiB || c.SourceVolumeID != v.ID {
		t.Fatalf("restore/clone sizes: %+v %+v", r, c)
	}
	vol := func(id string) func() error { return func() error { return e.m.DeleteVolume(ctx, id) } }
	snp := func(id string) func() error { return func() error { return e.m.DeleteSnapshot(ctx, id) } }
	return []string{"V", "S", "R", "C", "CC", "S2"},
		[]func() error{vol(v.ID), snp(s.ID), vol(r.ID), vol(c.ID), vol(cc.ID), snp(s2.ID)}
}

func TestGCInEveryDeleteOrder(t *testing.T) {
	for _, order := range permutations(6) {
		e := newEnv(t)
		names, del := buildGraph(t, e)
		e.checkConsistent(t)
		trace := ""
		for _, i := range order {
			trace += names[i] + " "
			if err := del[i](); err != nil {
				t.Fatalf("order %s: %v", trace, err)
			}
			e.checkConsistent(t)
			if t.Failed() {
				t.Fatalf("inconsistent after deleting %s", trace)
			}
		}
		if n := listNames(t, e.m.deltasDir()); len(n) != 0 {
			t.Fatalf("order %s: deltas left %v", trace, n)
		}
		if n := listNames(t, e.m.volumesDir()); len(n) != 0 {
			t.Fatalf("order %s: volume dirs left %v", trace, n)
		}
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
