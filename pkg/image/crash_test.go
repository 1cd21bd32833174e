package image

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// The crash tests cut a workload off after every single file-system operation
// and reboot under two persistence models. After each crash the image must
// open for writing, pass Check, and hold exactly the state after the last
// completed step (or after the step that was running, if it got through).

const crashCluster = 64 << 10 // small clusters keep the in-memory files small

// diskModel is the expected content of the clusters a workload touches.
type diskModel struct {
	size     int64
	clusters map[int64][]byte // cluster index -> content
}

func (m diskModel) clone() diskModel {
	c := diskModel{size: m.size, clusters: map[int64][]byte{}}
	for k, v := range m.clusters {
		c.clusters[k] = append([]byte(nil), v...)
	}
	return c
}

func (m diskModel) write(off int64, p []byte) {
	for len(p) > 0 {
		idx, inner := off/crashCluster, off%crashCluster
		c, ok := m.clusters[idx]
		if !ok {
			c = make([]byte, crashCluster)
			m.clusters[idx] = c
		}
		n := copy(c[inner:], p)
		p, off = p[n:], off+int64(n)
	}
}

type crashStep struct {
	durable bool        // everything before it is durable once it completes (it commits)
	sub     []crashStep // the steps of a batch
	name    string
	do      func(img *Image) error
	model   func(m *diskModel)
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

func writeStep(name string, off int64, p []byte) crashStep {
	return crashStep{name: name,
		do: func(img *Image) error {
			_, err := img.Chain().WriteAt(p, off)
			return err
		},
		model: func(m *diskModel) { m.write(off, p) }}
}

func discardStep(name string, off, n int64) crashStep {
	return crashStep{name: name,
		do:    func(img *Image) error { return img.Chain().Discard(off, n) },
		model: func(m *diskModel) { m.write(off, make([]byte, n)) }}
}

func snapshotStep() crashStep {
	return crashStep{name: "snapshot", durable: true,
		do: func(img *Image) error {
			_, err := img.Snapshot(SnapshotOptions{})
			return err
		},
		model: func(*diskModel) {}}
}

func growStep(size int64) crashStep {
	return crashStep{name: fmt.Sprintf("grow to %d", size), durable: true,
		do:    func(img *Image) error { return img.Grow(size) },
		model: func(m *diskModel) { m.size = size }}
}

// batchStep runs several steps before the one flush that follows it: one
// group commit makes all their allocations durable at once.
func batchStep(name string, steps ...crashStep) crashStep {
	return crashStep{name: name, sub: steps,
		do: func(img *Image) error {
			for _, s := range steps {
				if err := s.do(img); err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
			}
			return nil
		},
		model: func(m *diskModel) {
			for _, s := range steps {
				s.model(m)
			}
		}}
}

func crashWorkload() []crashStep {
	const cs = crashCluster
	return []crashStep{
		writeStep("allocate whole cluster", 0, pattern(1, cs)),
		writeStep("allocate partial cluster", cs+1000, pattern(2, 4096)),
		writeStep("overwrite in place", 8192, pattern(3, 4096)),
		writeStep("allocate sparse cluster", 10*cs+8192, pattern(7, 4096)),
		// 64 KiB clusters: 1008 BAT entries in the first 4 KiB page, 1024 in
		// each other: this commit writes three pages, two of them adjacent.
		batchStep("allocations in three BAT pages, one flush",
			writeStep("page 0", 6*cs, pattern(8, 4096)),
			writeStep("page 1", 1500*cs+4096, pattern(9, 8192)),
			writeStep("page 2", 2500*cs, pattern(10, cs)),
			writeStep("page 8", 9000*cs+cs/2, pattern(11, cs/2)),
			discardStep("discard part of a pending cluster", 6*cs, 2048),
			writeStep("overwrite a pending cluster", 1500*cs, pattern(12, 4096))),
		snapshotStep(),
		writeStep("copy-up partial", 100, pattern(4, 5000)),
		writeStep("copy-up over a lower hole", 10*cs+40960, pattern(13, 4096)),
		writeStep("whole lower cluster, nothing copied", 2500*cs, pattern(14, cs)),
		batchStep("copy-ups and allocations, one flush",
			writeStep("copy-up", 1500*cs+60000, pattern(15, 1000)),
			writeStep("allocate", 11*cs, pattern(16, 4096)),
			writeStep("copy-up sparse", 9000*cs, pattern(17, 4096))),
		discardStep("discard lower cluster", cs, cs),
		discardStep("discard part of top cluster", 16384, 8192),
		growStep(2 << 30), // 64 KiB clusters: the BAT outgrows its area, clusters move
		writeStep("write past old end", 3<<29, pattern(5, 3*4096)),
		snapshotStep(),
		writeStep("straddle two clusters", 3*cs-2048, pattern(6, 4096)),
	}
}

// runWorkload runs steps, each followed by a Flush, and returns how many
// completed.
func runWorkload(fsys FS, dir string, steps []crashStep) (int, error) {
	img, err := OpenDir(dir, OpenOptions{FS: fsys})
	if err != nil {
		return 0, err
	}
	for i, s := range steps {
		if err := s.do(img); err != nil {
			return i, fmt.Errorf("%s: %w", s.name, err)
		}
		if err := img.Chain().Flush(); err != nil {
			return i, fmt.Errorf("flush after %s: %w", s.name, err)
		}
	}
	return len(steps), img.Close()
}

func newCrashImage(t *testing.T) (*memFS, string) {
	t.Helper()
	fsys, dir := newMemFS(), t.TempDir()
	if err := Create(dir, 1<<30, CreateOptions{ClusterSize: crashCluster, FS: fsys}); err != nil {
		t.Fatal(err)
	}
	return fsys, dir
}

func TestCrashAtEveryOperation(t *testing.T) {
	if errs := crashAtEveryOperation(t, nil); len(errs) > 0 {
		t.Fatalf("%d of the crashes broke the image; first: %v", len(errs), errs[0])
	}
}

// crashAtEveryOperation runs the workload once to count its file-system
// operations, then once per cut point and persistence model, crashing after
// that many operations, and returns what the verification after each
// crash found wrong. wrap, if not nil, stands between the image and memFS.
func crashAtEveryOperation(t *testing.T, wrap func(*memFS) FS) []error {
	t.Helper()
	if wrap == nil {
		wrap = func(m *memFS) FS { return m }
	}
	steps := crashWorkload()
	states := []diskModel{{size: 1 << 30, clusters: map[int64][]byte{}}}
	for _, s := range steps {
		next := states[len(states)-1].clone()
		s.model(&next)
		states = append(states, next)
	}
	fsys, dir := newCrashImage(t)
	base := fsys.ops
	if n, err := runWorkload(wrap(fsys), dir, steps); err != nil || n != len(steps) {
		t.Fatalf("workload without crash: %d steps, %v", n, err)
	}
	total := fsys.ops - base
	t.Logf("workload: %d steps, %d file-system operations", len(steps), total)
	var errs []error
	for cut := 0; cut <= total; cut++ {
		for _, model := range []crashModel{keepAll, syncedOnly, metadataFirst} {
			fsys, dir := newCrashImage(t)
			fsys.limit = fsys.ops + cut
			done, err := runWorkload(wrap(fsys), dir, steps)
			if cut < total && !errors.Is(err, errCrashed) {
				t.Fatalf("cut %d: workload error %v, want a crash", cut, err)
			}
			after := fsys.reboot(model)
			want := states[done:min(done+2, len(states))]
			if err := verifyAfterCrash(after, dir, want); err != nil {
				errs = append(errs, fmt.Errorf("cut %d model %d (after %d steps): %w", cut, model, done, err))
			}
		}
	}
	return errs
}

// verifyAfterCrash opens the image found after a crash: it must pass the
// check, hold one of the allowed states, take a new allocating write, and
// be clean (nothing leaked, no mark) after a close.
func verifyAfterCrash(fsys *memFS, dir string, want []diskModel) error {
	return verifyWithJournal(fsys, dir, want, nil)
}

// verifyWithJournal is verifyAfterCrash with the journal j (nil: none)
// given to the open that recovers the image.
func verifyWithJournal(fsys *memFS, dir string, want []diskModel, j *PendingJournal) error {
	r, err := checkFS(fsys, dir, false)
	if err != nil || !r.OK() {
		return fmt.Errorf("check before open: %v %+v", err, r)
	}
	img, err := OpenDir(dir, OpenOptions{FS: fsys, Journal: j})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer img.Close()
	if err := modelMatches(img.Chain(), want); err != nil {
		return err
	}
	// Space the crash leaked is reclaimed or reused, never in the way.
	fresh := pattern(99, 4096)
	if _, err := img.Chain().WriteAt(fresh, 30*crashCluster+4096); err != nil {
		return fmt.Errorf("write after recovery: %w", err)
	}
	if err := img.Chain().Flush(); err != nil {
		return fmt.Errorf("flush after recovery: %w", err)
	}
	got := make([]byte, len(fresh))
	if _, err := img.Chain().ReadAt(got, 30*crashCluster+4096); err != nil || !bytes.Equal(got, fresh) {
		return fmt.Errorf("write after recovery reads back wrong (%v)", err)
	}
	if err := img.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	// Opening for writing recovered the dirty top: nothing left to repair.
	if r, _ = checkFS(fsys, dir, false); !r.Clean() {
		return fmt.Errorf("not clean after open and close: %+v", r)
	}
	return nil
}

// modelMatches checks that every cluster holds its content in one of the
// allowed states: a write that was never flushed may be torn between
// clusters, but no cluster may hold anything else, and flushed data is there.
func modelMatches(c *Chain, states []diskModel) error {
	sizeOK := false
	for _, m := range states {
		sizeOK = sizeOK || c.Size() == m.size
	}
	if !sizeOK {
		return fmt.Errorf("size %d, want %d", c.Size(), states[0].size)
	}
	idxs := map[int64]bool{0: true, 1: true, 2: true, 3: true, 4: true, 5: true}
	for _, m := range states {
		for idx := range m.clusters {
			idxs[idx] = true
		}
	}
	got := make([]byte, crashCluster)
	for idx := range idxs {
		if idx*crashCluster >= c.Size() {
			continue
		}
		if _, err := c.ReadAt(got, idx*crashCluster); err != nil {
			return err
		}
		if !clusterInSomeState(got, idx, states) {
			return fmt.Errorf("cluster %d holds neither the flushed content nor the content being written", idx)
		}
	}
	return nil
}

func clusterInSomeState(got []byte, idx int64, states []diskModel) bool {
	for _, m := range states {
		want, ok := m.clusters[idx]
		if !ok {
			want = make([]byte, crashCluster)
		}
		if bytes.Equal(got, want) {
			return true
		}
	}
	return false
}
