package volume

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
)

type env struct {
	root  string
	store *fakeStore
	att   *fakeAttacher
	mnt   *fakeMounter
	m     *Manager
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvAt(t, t.TempDir())
}

func newEnvAt(t *testing.T, root string) *env {
	t.Helper()
	store := newFakeStore()
	e := &env{root: root, store: store, att: newFakeAttacher(store), mnt: newFakeMounter()}
	e.reopen(t)
	return e
}

// memTempDir is a temporary directory in memory (tmpfs) where there is one:
// for tests that commit thousands of records, whose fsyncs would otherwise
// make them as slow as the disk is busy.
func memTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "volume-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// reopen starts a fresh Manager on the same root, as after a restart or crash; the
// fakes keep their state like the serving processes would.
// Merges run inline (in the goroutine of the RPC or of Open), so a test sees
// their effect when the call returns and a simulated crash unwinds the test.
func (e *env) reopen(t *testing.T) {
	t.Helper()
	e.store.step = nil
	if e.m != nil {
		e.m.Close()
	}
	m, err := Open(context.Background(), Options{
		Root: e.root, Store: e.store, Attacher: e.att, Mounter: e.mnt, SweepGrace: -1, inlineMerges: true,
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	e.m = m
	t.Cleanup(func() { m.Close() })
}

func (e *env) create(t *testing.T, name string, size int64) Volume {
	t.Helper()
	v, err := e.m.CreateVolume(context.Background(), CreateVolumeRequest{Name: name, RequiredBytes: size})
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return v
}

func (e *env) snap(t *testing.T, vol, name string) Snapshot {
	t.Helper()
	s, err := e.m.CreateSnapshot(context.Background(), vol, name)
	if err != nil {
		t.Fatalf("CreateSnapshot(%s): %v", name, err)
	}
	return s
}

type crashSignal struct{ point string }

// crashAt runs fn and reports whether it panicked with a simulated crash; the
// manager is then abandoned (deferred unlocks ran, nothing else did).
func crashAt(t *testing.T, fn func()) (crashed bool) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(crashSignal); !ok {
				panic(r)
			}
			crashed = true
		}
	}()
	fn()
	return false
}

// armCrash makes both the manager and the fake store crash at the named point.
func (e *env) armCrash(point string) {
	hit := func(p string) {
		if p == point {
			panic(crashSignal{p})
		}
	}
	e.m.crash, e.store.step = hit, hit
}

func listNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	sort.Strings(names)
	return names
}

// checkConsistent verifies the on-disk invariants: every referenced delta exists,
// every pool delta is referenced, every volume dir has a record and vice versa.
func (e *env) checkConsistent(t *testing.T) {
	t.Helper()
	refs := map[string]bool{}
	for _, id := range listNames(t, e.m.volMetaDir()) {
		id = id[:len(id)-len(".json")]
		d, err := readDesc(e.m.volDir(id))
		if err != nil {
			t.Fatalf("volume %s has a record but no image: %v", id, err)
		}
		for _, p := range d.Chain {
			refs[filepath.Base(p)] = true
		}
	}
	for _, id := range listNames(t, e.m.snapMetaDir()) {
		rec := &snapshotRecord{}
		if err := readJSON(filepath.Join(e.m.snapMetaDir(), id), rec); err != nil {
			t.Fatal(err)
		}
		for _, n := range rec.Chain {
			refs[n] = true
		}
	}
	for n := range refs {
		if _, err := os.Stat(e.m.deltaPath(n)); err != nil {
			t.Errorf("referenced delta %s missing: %v", n, err)
		}
	}
	for _, n := range listNames(t, e.m.deltasDir()) {
		if !refs[n] {
			t.Errorf("unreferenced delta %s left in the pool", n)
		}
	}
	for _, id := range listNames(t, e.m.volumesDir()) {
		if _, err := os.Stat(e.m.volMetaPath(id)); err != nil {
			t.Errorf("volume dir %s without record", id)
		}
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func ids[T any](items []T, id func(T) string) []string {
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, id(it))
	}
	slices.Sort(out)
	return out
}
