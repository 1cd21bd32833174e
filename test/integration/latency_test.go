package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopattach"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopstore"
)

// Latency of the controller operations that must not depend on how much data
// a volume holds: CreateVolume (empty, and cloned from a volume with data),
// CreateSnapshot and CreateVolume from a snapshot. They drive volume.Manager
// with the real ploop store (pkg/image) offline, as the controller does for an
// unattached volume; no root is needed.
//
// Each size is a volume of that capacity whose every 1 MiB cluster is
// allocated: 4 KiB of random data are written at the start of each cluster
// through image.OpenDir + Chain.WriteAt, so every BAT entry points at a data
// cluster, as if the whole capacity had been written. The BAT (and the
// cluster map built from it), not the bytes inside the clusters, is what
// these operations could depend on; writing full clusters would only make
// setup take minutes. On disk that is 4 KiB per cluster: 4 MiB for 1 GiB,
// 256 MiB for 64 GiB (the delta file is sparse, its apparent size is the
// capacity). "64GiB-empty" has the capacity without data, to tell a cost of
// the capacity (BAT size) from one of the data.
//
// CreateSnapshot and the clone add a delta to the source's chain at every
// iteration, so the chain grows by b.N + 1 per benchmark.
//
//	go test ./test/integration -run '^$' -bench . -benchtime 10x
var sizes = []struct {
	name     string
	capacity int64
	written  bool
}{
	{"1GiB", 1 << 30, true},
	{"64GiB", 64 << 30, true},
	{"64GiB-empty", 64 << 30, false},
}

// fixture is a storage root with one volume ("data") and a snapshot of it.
type fixture struct {
	root   string
	mgr    *volume.Manager
	data   volume.Volume
	snapID string
	alloc  int64 // bytes the data volume's deltas occupy on disk
}

var (
	seq        atomic.Int64 // unique volume and snapshot names
	fixturesMu sync.Mutex
	fixtures   = map[string]*fixture{}
)

// getFixture builds the fixture of a size once per test binary run.
func getFixture(b *testing.B, name string, capacity int64, written bool) *fixture {
	fixturesMu.Lock()
	defer fixturesMu.Unlock()
	if f := fixtures[name]; f != nil {
		return f
	}
	start := time.Now()
	f, err := newFixture(name, capacity, written)
	if err != nil {
		b.Fatalf("fixture %s: %v", name, err)
	}
	b.Logf("fixture %s: %d MiB of data on disk, built in %v", name, f.alloc>>20, time.Since(start).Round(time.Millisecond))
	fixtures[name] = f
	return f
}

// removeFixtures runs after all benchmarks (TestMain).
func removeFixtures() {
	for _, f := range fixtures {
		os.RemoveAll(f.root)
	}
}

func newFixture(name string, capacity int64, written bool) (*fixture, error) {
	root, err := os.MkdirTemp("", "csi-ploop-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	f := &fixture{root: root}
	ctx := context.Background()
	f.mgr, err = volume.Open(ctx, volume.Options{
		Root: filepath.Join(root, "root"), Store: ploopstore.New(filepath.Join(root, "run")), SweepGrace: -1,
		Attacher: ploopattach.New(attach.NewClient(attach.AttachOptions{RunDir: filepath.Join(root, "run")})),
	})
	if err == nil {
		f.data, err = f.mgr.CreateVolume(ctx, volume.CreateVolumeRequest{
			Name: "data", RequiredBytes: capacity, FsType: "ext4"})
	}
	dir := filepath.Join(f.mgr.Root(), "volumes", f.data.ID)
	if err == nil && written {
		err = fillClusters(dir)
	}
	if err == nil {
		f.alloc, err = allocated(dir)
	}
	if err == nil {
		err = syncfs(root) // setup's dirty pages must not be flushed inside a timed op
	}
	if err == nil {
		var s volume.Snapshot
		s, err = f.mgr.CreateSnapshot(ctx, f.data.ID, "base")
		f.snapID = s.ID
	}
	if err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	return f, nil
}

// fillClusters writes 4 KiB at the start of every cluster of the image dir,
// allocating its whole BAT. Syncs are skipped per write (syncfs at the end):
// the point is the allocation state, not crash safety of the setup.
func fillClusters(dir string) error {
	img, err := image.OpenDir(dir, image.OpenOptions{FS: noSyncFS{image.NewOSFS(false)}})
	if err != nil {
		return err
	}
	c := img.Chain()
	buf := randomBytes(4096)
	for off := int64(0); off < c.Size(); off += c.ClusterSize() {
		buf[0], buf[1] = byte(off>>20), byte(off>>28) // no two clusters alike
		if _, err := c.WriteAt(buf, off); err != nil {
			img.Close()
			return fmt.Errorf("write at %d: %w", off, err)
		}
	}
	return img.Close()
}

type noSyncFS struct{ image.FS }

func (fs noSyncFS) Create(path string) (image.File, error) {
	f, err := fs.FS.Create(path)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

func (fs noSyncFS) Open(path string, writable bool) (image.File, error) {
	f, err := fs.FS.Open(path, writable)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

func (noSyncFS) SyncDir(string) error { return nil }

type noSyncFile struct{ image.File }

func (noSyncFile) Sync() error { return nil }

func allocated(dir string) (int64, error) {
	d, err := image.ReadDescriptor(dir)
	if err != nil {
		return 0, err
	}
	files, err := d.ChainFiles(dir)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range files {
		n, err := image.AllocatedBytes(p)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func syncfs(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// forSizes runs op once per iteration for every size, timing only op; undo
// (untimed) removes what op made.
func forSizes(b *testing.B, op func(f *fixture) (undo func() error, err error)) {
	for _, s := range sizes {
		b.Run(s.name, func(b *testing.B) {
			f := getFixture(b, s.name, s.capacity, s.written)
			b.ResetTimer()
			for range b.N {
				undo, err := op(f)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := undo(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(f.alloc)/(1<<20), "dataMiB") // after ResetTimer, which clears it
		})
	}
}

func BenchmarkCreateVolume(b *testing.B) {
	forSizes(b, func(f *fixture) (func() error, error) {
		return f.create(volume.CreateVolumeRequest{RequiredBytes: f.data.CapacityBytes}, "empty")
	})
}

func BenchmarkCreateVolumeClone(b *testing.B) {
	forSizes(b, func(f *fixture) (func() error, error) {
		return f.create(volume.CreateVolumeRequest{SourceVolumeID: f.data.ID}, "clone")
	})
}

func BenchmarkCreateVolumeFromSnapshot(b *testing.B) {
	forSizes(b, func(f *fixture) (func() error, error) {
		return f.create(volume.CreateVolumeRequest{SourceSnapshotID: f.snapID}, "restore")
	})
}

func BenchmarkCreateSnapshot(b *testing.B) {
	forSizes(b, func(f *fixture) (func() error, error) {
		ctx := context.Background()
		s, err := f.mgr.CreateSnapshot(ctx, f.data.ID, fmt.Sprintf("snap-%d", seq.Add(1)))
		return func() error { return f.mgr.DeleteSnapshot(ctx, s.ID) }, err
	})
}

// create makes a volume with a unique name; undo deletes it.
func (f *fixture) create(req volume.CreateVolumeRequest, kind string) (func() error, error) {
	ctx := context.Background()
	req.Name, req.FsType = fmt.Sprintf("%s-%d", kind, seq.Add(1)), "ext4"
	v, err := f.mgr.CreateVolume(ctx, req)
	return func() error { return f.mgr.DeleteVolume(ctx, v.ID) }, err
}
