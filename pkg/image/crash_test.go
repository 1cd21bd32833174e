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
	name  string
	do    func(img *Image) error
	model func(m *diskModel)
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
	return crashStep{name: "snapshot",
		do: func(img *Image) error {
			_, err := img.Snapshot(SnapshotOptions{})
			return err
		},
		model: func(*diskModel) {}}
}

func growStep(size int64) crashStep {
	return crashStep{name: fmt.Sprintf("grow to %d", size),
		do:    func(img *Image) error { return img.Grow(size) },
		model: func(m *diskModel) { m.size = size }}
}

func crashWorkload() []crashStep {
	return []crashStep{
		writeStep("allocate whole cluster", 0, pattern(1, crashCluster)),
		writeStep("allocate partial cluster", crashCluster+1000, pattern(2, 4096)),
		writeStep("overwrite in place", 8192, pattern(3, 4096)),
		snapshotStep(),
		writeStep("copy-up partial", 100, pattern(4, 5000)),
		discardStep("discard lower cluster", crashCluster, crashCluster),
		discardStep("discard part of top cluster", 16384, 8192),
		growStep(2 << 30), // 64 KiB clusters: the BAT outgrows its area, clusters move
		writeStep("write past old end", 3<<29, pattern(5, 3*4096)),
		snapshotStep(),
		writeStep("straddle two clusters", 3*crashCluster-2048, pattern(6, 4096)),
	}
}

// runWorkload runs steps, each followed by a Flush, and returns how many
// completed.
func runWorkload(fsys *memFS, dir string, steps []crashStep) (int, error) {
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
	steps := crashWorkload()
	states := []diskModel{{size: 1 << 30, clusters: map[int64][]byte{}}}
	for _, s := range steps {
		next := states[len(states)-1].clone()
		s.model(&next)
		states = append(states, next)
	}
	fsys, dir := newCrashImage(t)
	base := fsys.ops
	if n, err := runWorkload(fsys, dir, steps); err != nil || n != len(steps) {
		t.Fatalf("workload without crash: %d steps, %v", n, err)
	}
	total := fsys.ops - base
	t.Logf("workload: %d steps, %d file-system operations", len(steps), total)
	for cut := 0; cut <= total; cut++ {
		for _, model := range []crashModel{keepAll, syncedOnly, metadataFirst} {
			fsys, dir := newCrashImage(t)
			fsys.limit = fsys.ops + cut
			done, err := runWorkload(fsys, dir, steps)
			if cut < total && !errors.Is(err, errCrashed) {
				t.Fatalf("cut %d: workload error %v, want a crash", cut, err)
			}
			after := fsys.reboot(model)
			want := states[done:min(done+2, len(states))]
			verifyAfterCrash(t, fmt.Sprintf("cut %d model %d (after %d steps)", cut, model, done), after, dir, want)
		}
	}
}

func verifyAfterCrash(t *testing.T, what string, fsys *memFS, dir string, want []diskModel) {
	t.Helper()
	r, err := checkFS(fsys, dir, false)
	if err != nil || !r.OK() {
		t.Fatalf("%s: check before open: %v %+v", what, err, r)
	}
	img, err := OpenDir(dir, OpenOptions{FS: fsys})
	if err != nil {
		t.Fatalf("%s: open: %v", what, err)
	}
	if err := modelMatches(img.Chain(), want); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := img.Close(); err != nil {
		t.Fatalf("%s: close: %v", what, err)
	}
	// Opening for writing recovered the dirty top: nothing left to repair.
	if r, _ = checkFS(fsys, dir, false); !r.Clean() {
		t.Fatalf("%s: not clean after open and close: %+v", what, r)
	}
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
