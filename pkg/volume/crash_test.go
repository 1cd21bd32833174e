package volume

import (
	"slices"
	"testing"
)

// crashCase: set up state, run op with a crash armed at point, reopen (which sweeps),
// check invariants, retry op, check again.
type crashCase struct {
	points []string
	setup  func(t *testing.T, e *env) (op func() error, verify func(t *testing.T))
}

// before, if given, runs after the setup, before the crash.
func runCrashCases(t *testing.T, c crashCase, before ...func(e *env, t *testing.T)) {
	for _, point := range c.points {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t)
			op, verify := c.setup(t, e)
			for _, b := range before {
				b(e, t)
			}
			e.armCrash(point)
			if !crashAt(t, func() { _ = op() }) {
				t.Fatalf("crash point %s never reached", point)
			}
			e.reopen(t)
			e.checkConsistent(t)
			if err := op(); err != nil {
				t.Fatalf("retry after crash at %s: %v", point, err)
			}
			e.checkConsistent(t)
			verify(t)
			e.reopen(t)
			e.checkConsistent(t)
		})
	}
}

var createPoints = []string{"create.dir", "create.delta", "create.descriptor", "create.image-done", "create.committed"}

func TestCrashDuringCreateVolume(t *testing.T) {
	runCrashCases(t, crashCase{points: createPoints, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		req := CreateVolumeRequest{Name: "a", RequiredBytes: MiB}
		return func() error { _, err := e.m.CreateVolume(ctx, req); return err },
			func(t *testing.T) {
				vols, _, _ := e.m.ListVolumes(ctx, "", 0)
				if len(vols) != 1 || vols[0].Name != "a" {
					t.Fatalf("volumes after retry: %+v", vols)
				}
			}
	}})
}

func TestCrashDuringRestore(t *testing.T) {
	runCrashCases(t, crashCase{points: createPoints, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		v := e.create(t, "src", MiB)
		s := e.snap(t, v.ID, "s")
		req := CreateVolumeRequest{Name: "r", SourceSnapshotID: s.ID}
		return func() error { _, err := e.m.CreateVolume(ctx, req); return err },
			func(t *testing.T) {
				vols, _, _ := e.m.ListVolumes(ctx, "", 0)
				if len(vols) != 2 {
					t.Fatalf("volumes after retry: %+v", vols)
				}
			}
	}})
}

func TestCrashDuringClone(t *testing.T) {
	points := append([]string{"snapshot.delta", "snapshot.descriptor", "clone.source-frozen"}, createPoints...)
	runCrashCases(t, crashCase{points: points, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		v := e.create(t, "src", MiB)
		req := CreateVolumeRequest{Name: "c", SourceVolumeID: v.ID}
		return func() error { _, err := e.m.CreateVolume(ctx, req); return err },
			func(t *testing.T) {
				// Deleting the source must leave the clone intact and the pool exact.
				if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
					t.Fatal(err)
				}
				e.checkConsistent(t)
			}
	}})
}

func TestCrashDuringCreateSnapshot(t *testing.T) {
	points := []string{"snapshot.delta", "snapshot.descriptor", "snapshot.frozen", "snapshot.committed"}
	runCrashCases(t, crashCase{points: points, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		v := e.create(t, "v", MiB)
		return func() error { _, err := e.m.CreateSnapshot(ctx, v.ID, "s"); return err },
			func(t *testing.T) {
				snaps, _, _ := e.m.ListSnapshots(ctx, SnapshotFilter{}, "", 0)
				if len(snaps) != 1 {
					t.Fatalf("snapshots after retry: %+v", snaps)
				}
				if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
					t.Fatal(err)
				}
				e.checkConsistent(t)
			}
	}})
}

func TestCrashDuringDeleteVolume(t *testing.T) {
	points := []string{"delete.committed", "delete.dir-removed"}
	runCrashCases(t, crashCase{points: points, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		v := e.create(t, "v", MiB)
		s := e.snap(t, v.ID, "s")
		return func() error { return e.m.DeleteVolume(ctx, v.ID) },
			func(t *testing.T) {
				if _, err := e.m.GetVolume(ctx, v.ID); err == nil {
					t.Fatal("volume survived delete")
				}
				if _, err := e.m.GetSnapshot(ctx, s.ID); err != nil {
					t.Fatalf("snapshot lost: %v", err)
				}
				if err := e.m.DeleteSnapshot(ctx, s.ID); err != nil {
					t.Fatal(err)
				}
				if n := listNames(t, e.m.deltasDir()); len(n) != 0 {
					t.Fatalf("deltas left: %v", n)
				}
			}
	}})
}

func TestCrashDuringDeleteSnapshot(t *testing.T) {
	runCrashCases(t, crashCase{points: []string{"snapshot-delete.committed"}, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		v := e.create(t, "v", MiB)
		s := e.snap(t, v.ID, "s")
		if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		return func() error { return e.m.DeleteSnapshot(ctx, s.ID) },
			func(t *testing.T) {
				if n := listNames(t, e.m.deltasDir()); len(n) != 0 {
					t.Fatalf("deltas left: %v", n)
				}
			}
	}})
}

func TestCrashDuringExpand(t *testing.T) {
	runCrashCases(t, crashCase{points: []string{"expand.grown"}, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		v := e.create(t, "v", MiB)
		return func() error { _, err := e.m.ExpandVolume(ctx, v.ID, 3*MiB); return err },
			func(t *testing.T) {
				if got, _ := e.m.GetVolume(ctx, v.ID); got.CapacityBytes != 3*MiB {
					t.Fatalf("capacity %d", got.CapacityBytes)
				}
			}
	}})
}

// mergeCrashPoints are the steps of a merge: the intent, the data copy, the
// switch of the volume's descriptor (store), the copy recorded, each record
// rewritten, the intent removed.
var mergeCrashPoints = []string{"merge.intent", "merge.data", "merge.descriptor", "merge.copied",
	"merge.copy-recorded", "merge.record-rewritten", "merge.done"}

// mergeCrashCase crashes a delete at every step of the merge it causes;
// after the restart (whose merge pass finishes or redoes the merge) and the
// retried delete, every object shows its data and nothing is left unmerged.
func mergeCrashCase(t *testing.T, points []string, build func(t *testing.T, e *env) (del func() error)) {
	var want map[string]map[int]string
	runCrashCases(t, crashCase{points: points, setup: func(t *testing.T, e *env) (func() error, func(*testing.T)) {
		del := build(t, e)
		return del, func(t *testing.T) { e.checkMerged(t, want) }
	}}, func(e *env, t *testing.T) { want = e.views(t) })
}

// A frozen pair held by the volume and a later snapshot's record: deleting
// the older snapshot merges its delta with the newer one's.
func TestCrashDuringMergeOfFrozenPair(t *testing.T) {
	mergeCrashCase(t, mergeCrashPoints, func(t *testing.T, e *env) func() error {
		v := e.create(t, "v", MiB)
		e.write(t, v.ID, 0, "a")
		s1 := e.snap(t, v.ID, "s1")
		e.write(t, v.ID, 1, "b")
		e.snap(t, v.ID, "s2")
		e.write(t, v.ID, 0, "c")
		return func() error { return e.m.DeleteSnapshot(ctx, s1.ID) }
	})
}

// The only snapshot of a volume: its delta merges with the writable top.
func TestCrashDuringMergeWithTheTop(t *testing.T) {
	points := slices.DeleteFunc(slices.Clone(mergeCrashPoints), func(p string) bool { return p == "merge.record-rewritten" })
	mergeCrashCase(t, points, func(t *testing.T, e *env) func() error {
		v := e.create(t, "v", MiB)
		e.write(t, v.ID, 0, "a")
		s := e.snap(t, v.ID, "s")
		e.write(t, v.ID, 1, "b")
		return func() error { return e.m.DeleteSnapshot(ctx, s.ID) }
	})
}

// Snapshot chains whose volume is gone: the middle snapshot's delta merges
// with the newest one's (MergeDeltas), and only records are rewritten.
func TestCrashDuringMergeOfSnapshotChains(t *testing.T) {
	points := slices.DeleteFunc(slices.Clone(mergeCrashPoints), func(p string) bool { return p == "merge.descriptor" })
	mergeCrashCase(t, points, func(t *testing.T, e *env) func() error {
		v := e.create(t, "v", MiB)
		e.write(t, v.ID, 0, "a")
		e.snap(t, v.ID, "s1")
		e.write(t, v.ID, 1, "b")
		s2 := e.snap(t, v.ID, "s2")
		e.write(t, v.ID, 0, "c")
		e.snap(t, v.ID, "s3")
		if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		return func() error { return e.m.DeleteSnapshot(ctx, s2.ID) }
	})
}
