package image

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// The merge crash tests cut every merge (offline both ways, the top as
// child, two deltas outside any image, online frozen and top) off after
// every file-system operation, under every persistence model. After each
// cut: the image and a second image sharing its base pass check and open;
// the image reads as before the merge (online: no flushed write lost);
// the other image and a live snapshot's chain read unchanged; and running
// the merge again, in either direction, converges to a clean image with
// the same content.

// mergeWorld is an image dir A with chain [B, P, C, T, U] (P frozen before
// a grow that made the BAT outgrow its area, so a down merge of P and C
// grows P and moves its clusters) and an image dir D2 on B.
type mergeWorld struct {
	a, d2      string
	b, p, c, t string
	u          string    // the top above T
	wantA      diskModel // A's content
	wantD2     diskModel
	wantSnapC  diskModel // the chain [B, P, C]: a live snapshot of C
}

const crashBig = int64(1) << 30

// mergeIdxs are the clusters the verification reads.
func mergeIdxs() []int64 {
	idx := []int64{}
	for i := int64(0); i < 16; i++ {
		idx = append(idx, i)
	}
	return append(idx, crashBig/crashCluster, crashBig/crashCluster+1)
}

func buildMergeWorld(t *testing.T, fsys *memFS) *mergeWorld {
	t.Helper()
	const cs = crashCluster
	w := &mergeWorld{a: t.TempDir(), d2: t.TempDir()}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(Create(w.a, crashBig, CreateOptions{ClusterSize: cs, FS: fsys}))
	img, err := OpenDir(w.a, OpenOptions{FS: fsys})
	must(err)
	c := img.Chain()
	mustWrite(t, c, 0, pattern(1, 8*cs))
	_, err = img.Snapshot(SnapshotOptions{})
	must(err)
	mustWrite(t, c, 2*cs, pattern(2, 4*cs))
	mustWrite(t, c, 9*cs+4096, pattern(3, 8192))
	_, err = img.Snapshot(SnapshotOptions{})
	must(err)
	must(img.Grow(2 * crashBig))
	mustWrite(t, c, 3*cs, pattern(4, cs))
	mustWrite(t, c, 4*cs+8192, pattern(5, 4096))
	must(c.Discard(5*cs, cs))
	mustWrite(t, c, crashBig+cs, pattern(6, 8192))
	mustWrite(t, c, 12*cs+cs/2, pattern(7, 4096))
	_, err = img.Snapshot(SnapshotOptions{})
	must(err)
	mustWrite(t, c, 2*cs, pattern(8, 4096))
	mustWrite(t, c, 13*cs, pattern(9, cs))
	_, err = img.Snapshot(SnapshotOptions{})
	must(err)
	mustWrite(t, c, 3*cs+4096, pattern(11, 4096))
	files := c.Deltas()
	w.b, w.p, w.c, w.t, w.u = files[0], files[1], files[2], files[3], files[4]
	w.wantA = readModel(t, c)
	must(img.Close())
	snap, err := OpenChain([]string{w.b, w.p, w.c}, ChainOptions{FS: fsys, ReadOnly: true})
	must(err)
	w.wantSnapC = readModel(t, snap)
	snap.Close()
	must(CreateOnChain(w.d2, []string{w.b}, crashBig, CreateOptions{ClusterSize: cs, FS: fsys}))
	img2, err := OpenDir(w.d2, OpenOptions{FS: fsys})
	must(err)
	mustWrite(t, img2.Chain(), 6*cs, pattern(10, cs))
	w.wantD2 = readModel(t, img2.Chain())
	must(img2.Close())
	return w
}

func readModel(t *testing.T, c *Chain) diskModel {
	t.Helper()
	m := diskModel{size: c.Size(), clusters: map[int64][]byte{}}
	for _, idx := range mergeIdxs() {
		if idx*crashCluster < c.Size() {
			m.clusters[idx] = mustRead(t, c, idx*crashCluster, crashCluster)
		}
	}
	return m
}

// mergeScenario is one merge under test. run does it on fsys; it returns
// the states A may show after a crash once stage() steps completed.
type mergeScenario struct {
	name string
	run  func(fsys FS, w *mergeWorld, stage *int) error
	// again reruns the merge after a crash, flipped to the other direction
	// if flip, and returns the kept delta ("" if it was switched already).
	again func(fsys FS, w *mergeWorld, flip bool) (string, error)
	// states[i]: what A may read after i stages; nil: wantA only.
	states func(w *mergeWorld) [][]diskModel
	files  bool // MergeDeltaFiles: also check that the kept delta reads as [B, P, C]
	// writesC: the merge writes into C (down into it), the tip of the
	// snapshot chain [B, P, C], whose content then changes: such a pair
	// counts as shared, the domain never merges it so. Not checked.
	writesC bool
}

func offlinePair(name string, parent, child func(*mergeWorld) string, dir MergeDirection) mergeScenario {
	run := func(fsys FS, w *mergeWorld, d MergeDirection) (string, error) {
		st, err := MergeDirPair(context.Background(), w.a, parent(w), child(w), PairMergeOptions{Direction: d, FS: fsys, Shared: noneShared})
		if errors.Is(err, ErrNotFound) {
			return "", nil // switched before the crash
		}
		return st.Kept, err
	}
	return mergeScenario{name: name,
		run: func(fsys FS, w *mergeWorld, _ *int) error {
			_, err := run(fsys, w, dir)
			return err
		},
		again: func(fsys FS, w *mergeWorld, flip bool) (string, error) { return run(fsys, w, flipDir(dir, flip)) }}
}

func flipDir(d MergeDirection, flip bool) MergeDirection {
	switch {
	case !flip:
		return d
	case d == MergeDown:
		return MergeUp
	}
	return MergeDown
}

func deltaFilesScenario(dir MergeDirection) mergeScenario {
	run := func(fsys FS, w *mergeWorld, d MergeDirection) (string, error) {
		st, err := MergeDeltaFiles(context.Background(), w.p, w.c, PairMergeOptions{Direction: d, FS: fsys})
		return st.Kept, err
	}
	return mergeScenario{name: "delta files " + string(dir), files: true,
		run: func(fsys FS, w *mergeWorld, _ *int) error {
			_, err := run(fsys, w, dir)
			return err
		},
		again: func(fsys FS, w *mergeWorld, flip bool) (string, error) { return run(fsys, w, flipDir(dir, flip)) }}
}

// onlineScenario: a flushed write, an unflushed one, the merge with a
// write and a flush in the middle of its copy (from the progress
// callback, as I/O goes on), a write and a flush after it, all on the open
// image. The write during the copy lands in a cluster the top lacks and
// the parent holds: the writer's copy-up races the merge's.
func onlineScenario(name string, parent, child func(*mergeWorld) string, dir MergeDirection, topChild bool) mergeScenario {
	const cs = crashCluster
	x, y, mid, z := pattern(20, cs), pattern(21, 4096), pattern(23, 4096), pattern(22, cs)
	const xOff, yOff, midOff, zOff = 7 * cs, 14*cs + 4096, 12*cs + 8192, 15 * cs
	run := func(fsys FS, w *mergeWorld, stage *int) error {
		img, err := OpenDir(w.a, OpenOptions{FS: fsys})
		if err != nil {
			return err
		}
		c := img.Chain()
		if _, err := c.WriteAt(x, xOff); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return err
		}
		*stage = 1
		if _, err := c.WriteAt(y, yOff); err != nil {
			return err
		}
		var midErr error
		progress := func(done, total int64) {
			if *stage != 1 || midErr != nil {
				return
			}
			if _, midErr = c.WriteAt(mid, midOff); midErr == nil {
				if midErr = c.Flush(); midErr == nil {
					*stage = 2
				}
			}
		}
		if _, err := img.Merge(context.Background(), parent(w), child(w), PairMergeOptions{Direction: dir, Progress: progress}); err != nil || midErr != nil {
			return errors.Join(err, midErr)
		}
		if _, err := c.WriteAt(z, zOff); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return err
		}
		*stage = 3
		return img.Close()
	}
	again := func(fsys FS, w *mergeWorld, flip bool) (string, error) {
		img, err := OpenDir(w.a, OpenOptions{FS: fsys})
		if err != nil {
			return "", err
		}
		d := dir
		if flip && !topChild {
			d = MergeAuto // down would have to grow the parent: Auto takes up
		}
		st, err := img.Merge(context.Background(), parent(w), child(w), PairMergeOptions{Direction: d})
		if errors.Is(err, ErrNotFound) {
			err = nil
		}
		return st.Kept, errors.Join(err, img.Close())
	}
	states := func(w *mergeWorld) [][]diskModel {
		s0 := w.wantA
		s1 := s0.clone()
		s1.write(xOff, x)
		s1y := s1.clone()
		s1y.write(yOff, y)
		s2 := s1y.clone()
		s2.write(midOff, mid)
		s3 := s2.clone()
		s3.write(zOff, z)
		// Per cluster: an unflushed write may or may not be there.
		return [][]diskModel{{s0, s1}, {s1, s1y, s2, s3}, {s2, s3}, {s3}}
	}
	return mergeScenario{name: name, run: run, again: again, states: states}
}

func mergeScenarios() []mergeScenario {
	p := func(w *mergeWorld) string { return w.p }
	c := func(w *mergeWorld) string { return w.c }
	t := func(w *mergeWorld) string { return w.t }
	top := func(w *mergeWorld) string { return w.u }
	return []mergeScenario{
		offlinePair("offline down", p, c, MergeDown),
		offlinePair("offline up", p, c, MergeUp),
		offlinePair("offline top down", t, top, MergeDown),
		offlinePair("offline top up", t, top, MergeUp),
		deltaFilesScenario(MergeDown),
		deltaFilesScenario(MergeUp),
		onlineScenario("online frozen up", p, c, MergeUp, false),
		func() mergeScenario {
			sc := onlineScenario("online frozen down", c, t, MergeDown, false)
			sc.writesC = true
			return sc
		}(),
		// B is shared with D2: up leaves it alone and drops it from A.
		onlineScenario("online bottom up", func(w *mergeWorld) string { return w.b }, p, MergeUp, false),
		onlineScenario("online top up", t, top, MergeUp, true),
		onlineScenario("online top down", t, top, MergeDown, true),
	}
}

func TestMergeCrashAtEveryOperation(t *testing.T) {
	base := newMemFS()
	w := buildMergeWorld(t, base)
	for _, sc := range mergeScenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel() // each on its own copy of the world
			fsys := base.reboot(keepAll)
			var stage int
			if err := sc.run(fsys, w, &stage); err != nil {
				t.Fatalf("without a crash: %v", err)
			}
			total := fsys.ops
			if err := verifyMerge(fsys, w, sc, stage, false); err != nil {
				t.Fatalf("without a crash: %v", err)
			}
			var errs []error
			for cut := 0; cut < total; cut++ {
				for _, model := range []crashModel{keepAll, syncedOnly, metadataFirst} {
					fsys := base.reboot(keepAll)
					fsys.limit = cut
					stage := 0
					if err := sc.run(fsys, w, &stage); !errors.Is(err, errCrashed) {
						t.Fatalf("cut %d: %v, want a crash", cut, err)
					}
					after := fsys.reboot(model)
					if err := verifyMerge(after, w, sc, stage, cut%2 == 1); err != nil {
						errs = append(errs, fmt.Errorf("cut %d of %d, model %d: %w", cut, total, model, err))
					}
				}
			}
			if len(errs) > 0 {
				t.Fatalf("%d of %d crashes went wrong; first: %v", len(errs), 3*total, errs[0])
			}
			t.Logf("%d operations, each cut under 3 models", total)
		})
	}
}

// verifyMerge checks the file system found after a crash (see above).
func verifyMerge(fsys *memFS, w *mergeWorld, sc mergeScenario, stage int, flip bool) error {
	for _, d := range []string{w.a, w.d2} {
		if r, err := checkFS(fsys, d, false); err != nil || !r.OK() {
			return fmt.Errorf("check %s: %v %+v", filepath.Base(d), err, r)
		}
	}
	states := []diskModel{w.wantA}
	if sc.states != nil {
		states = sc.states(w)[stage]
	}
	now, err := readDirModel(fsys, w.a, states, false)
	if err != nil {
		return fmt.Errorf("after the crash: %w", err)
	}
	if err := unchanged(fsys, w, sc); err != nil {
		return err
	}
	kept, err := sc.again(fsys, w, flip)
	if err != nil {
		return fmt.Errorf("merge again (flipped %v): %w", flip, err)
	}
	if _, err := readDirModel(fsys, w.a, []diskModel{now}, true); err != nil {
		return fmt.Errorf("after the rerun: %w", err)
	}
	if r, err := checkFS(fsys, w.a, false); err != nil || !r.Clean() {
		return fmt.Errorf("not clean after the rerun: %v %+v", err, r)
	}
	if sc.files {
		if err := chainMatches(fsys, []string{w.b, kept}, w.wantSnapC); err != nil {
			return fmt.Errorf("kept delta %s: %w", filepath.Base(kept), err)
		}
	}
	return unchanged(fsys, w, sc)
}

// unchanged: the other image and the live snapshot of C read as before.
func unchanged(fsys *memFS, w *mergeWorld, sc mergeScenario) error {
	if err := chainMatches(fsys, []string{w.b, mustChainFile(fsys, w.d2)}, w.wantD2); err != nil {
		return fmt.Errorf("the image sharing the base: %w", err)
	}
	if sc.writesC {
		return nil
	}
	if err := chainMatches(fsys, []string{w.b, w.p, w.c}, w.wantSnapC); err != nil {
		return fmt.Errorf("the snapshot of C: %w", err)
	}
	return nil
}

func mustChainFile(fsys *memFS, dir string) string {
	d, err := readDescriptor(fsys, dir)
	if err != nil {
		return ""
	}
	files, _ := d.ChainFiles(dir)
	return files[len(files)-1]
}

func chainMatches(fsys *memFS, files []string, want diskModel) error {
	c, err := OpenChain(files, ChainOptions{FS: fsys, ReadOnly: true})
	if err != nil {
		return err
	}
	defer c.Close()
	return modelMatches(c, []diskModel{want})
}

// readDirModel opens dir (writable: recovery runs), checks its content
// against states and returns what it reads.
func readDirModel(fsys *memFS, dir string, states []diskModel, exact bool) (diskModel, error) {
	img, err := OpenDir(dir, OpenOptions{FS: fsys})
	if err != nil {
		return diskModel{}, fmt.Errorf("open: %w", err)
	}
	defer img.Close()
	if err := modelMatches(img.Chain(), states); err != nil {
		return diskModel{}, err
	}
	m := diskModel{size: img.Chain().Size(), clusters: map[int64][]byte{}}
	for _, idx := range mergeIdxs() {
		if idx*crashCluster < m.size {
			b := make([]byte, crashCluster)
			if _, err := img.Chain().ReadAt(b, idx*crashCluster); err != nil {
				return m, err
			}
			m.clusters[idx] = b
		}
	}
	return m, img.Close()
}
