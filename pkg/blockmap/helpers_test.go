package blockmap

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fileDisk is a Disk on a plain sparse file, instrumented for tests.
type fileDisk struct {
	f    *os.File
	size atomic.Int64

	flushes  atomic.Int64
	writes   atomic.Int64
	discards atomic.Int64
	maxWrite atomic.Int64
	// unaligned counts ReadAt/WriteAt buffers that are not page aligned:
	// the FUSE layer promises aligned ones (O_DIRECT backing files).
	unaligned atomic.Int64

	// paused is set by tests while a Quiesce fn runs; any Disk call seen
	// then is a violation.
	paused     atomic.Bool
	violations atomic.Int64

	mu      sync.Mutex
	blockAt int64         // WriteAt at this offset waits on release
	entered chan struct{} // closed when the blocked write arrived
	release chan struct{}
}

func newFileDisk(t *testing.T, size int64) *fileDisk {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "backing"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	d := &fileDisk{f: f, blockAt: -1}
	d.size.Store(size)
	return d
}

func (d *fileDisk) check() {
	if d.paused.Load() {
		d.violations.Add(1)
	}
}

func (d *fileDisk) ReadAt(p []byte, off int64) (int, error) {
	d.check()
	d.checkAligned(p)
	return d.f.ReadAt(p, off)
}

func (d *fileDisk) checkAligned(p []byte) {
	if uintptr(unsafe.Pointer(unsafe.SliceData(p)))%4096 != 0 {
		d.unaligned.Add(1)
	}
}

func (d *fileDisk) WriteAt(p []byte, off int64) (int, error) {
	d.check()
	d.mu.Lock()
	blocked := off == d.blockAt
	entered, release := d.entered, d.release
	d.mu.Unlock()
	if blocked {
		close(entered)
		<-release
	}
	d.writes.Add(1)
	d.checkAligned(p)
	for n := int64(len(p)); ; {
		m := d.maxWrite.Load()
		if n <= m || d.maxWrite.CompareAndSwap(m, n) {
			break
		}
	}
	return d.f.WriteAt(p, off)
}

func (d *fileDisk) Flush() error {
	d.check()
	d.flushes.Add(1)
	return d.f.Sync()
}

func (d *fileDisk) Discard(off, length int64) error {
	d.check()
	d.discards.Add(1)
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (d *fileDisk) Size() int64 { return d.size.Load() }

func (d *fileDisk) grow(t *testing.T, size int64) {
	t.Helper()
	if err := d.f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	d.size.Store(size)
}

// blockWritesAt makes the next WriteAt at off wait until the returned
// release func is called; entered is closed when that write arrives. The
// release func is idempotent and registered as cleanup, so a failing test
// never leaves a server goroutine stuck (Close would wait for it).
func (d *fileDisk) blockWritesAt(t *testing.T, off int64) (entered <-chan struct{}, release func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.blockAt = off
	d.entered = make(chan struct{})
	d.release = make(chan struct{})
	var once sync.Once
	rel := d.release
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release)
	return d.entered, release
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: FUSE direct mount and loop devices")
	}
}

// mountDisk mounts d and registers Close as cleanup. Cleanups run last in,
// first out, so anything the test opens afterwards is closed before this
// unmount runs.
func mountDisk(t *testing.T, d Disk, opts Options) *Server {
	t.Helper()
	requireRoot(t)
	s, err := Mount(context.Background(), filepath.Join(t.TempDir(), "mnt"), d, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func openFile(t *testing.T, s *Server) *os.File {
	t.Helper()
	f, err := os.OpenFile(s.FilePath(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// alignedTestBuffer returns n bytes at a page-aligned address (O_DIRECT).
func alignedTestBuffer(n int) []byte {
	b := make([]byte, n+4096)
	shift := (4096 - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4096)) % 4096
	return b[shift : shift+n]
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i%251)
	}
	return p
}
