package image

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"testing"
)

// faultFS wraps an FS and fails, once each, the next Sync or the next write
// into the header/BAT area (below metaEnd) of a file it opened (only of
// file only, if set), after they were armed. The failing call does not reach the wrapped file: as when the
// kernel drops dirty pages after a failed writeback, nothing it covered is
// durable.
type faultFS struct {
	FS
	metaEnd int64
	only    string

	mu        sync.Mutex
	failSync  bool
	failMeta  bool
	triggered int
}

var errInjected = errors.New("injected I/O error")

func (f *faultFS) arm(sync, meta bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failSync, f.failMeta = sync, meta
}

func (f *faultFS) take(flag *bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if *flag {
		*flag = false
		f.triggered++
		return true
	}
	return false
}

func (f *faultFS) Create(path string) (File, error) {
	file, err := f.FS.Create(path)
	if err != nil {
		return nil, err
	}
	return f.wrap(file, path), nil
}

func (f *faultFS) Open(path string, writable bool) (File, error) {
	file, err := f.FS.Open(path, writable)
	if err != nil {
		return nil, err
	}
	return f.wrap(file, path), nil
}

func (f *faultFS) wrap(file File, path string) File {
	if f.only != "" && path != f.only {
		return file
	}
	return &faultFile{File: file, fs: f}
}

type faultFile struct {
	File
	fs *faultFS
}

func (f *faultFile) Sync() error {
	if f.fs.take(&f.fs.failSync) {
		return errInjected
	}
	return f.File.Sync()
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if off >= HeaderSize && off < f.fs.metaEnd && f.fs.take(&f.fs.failMeta) {
		return 0, errInjected
	}
	return f.File.WriteAt(p, off)
}

// TestSyncFailureIsSticky: after one failed sync (or BAT write), no later
// write, discard, flush, snapshot or grow may report success, because what
// was written before the failure may be gone from the page cache. Reads go
// on. Closing keeps the in-use mark; the next open checks the image and
// finds what a completed flush acknowledged.
func TestSyncFailureIsSticky(t *testing.T) {
	const cs = 64 << 10
	writeAndFlush := func(img *Image) []error {
		_, werr := img.Chain().WriteAt(pattern(2, 4096), 3*cs)
		return []error{werr, img.Chain().Flush()}
	}
	snapshot := func(img *Image) []error {
		_, err := img.Snapshot(SnapshotOptions{})
		return []error{err}
	}
	for _, tc := range []struct {
		name       string
		sync, meta bool
		trigger    func(*Image) []error // one of its steps meets the fault
	}{
		{"flush sync fails", true, false, writeAndFlush},
		{"BAT write fails", false, true, writeAndFlush},
		{"snapshot sync fails", true, false, snapshot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, dir := newMemFS(), t.TempDir()
			fsys := &faultFS{FS: mem, metaEnd: cs, only: filepath.Join(dir, RootDeltaFile)}
			if err := Create(dir, 8<<20, CreateOptions{ClusterSize: cs, FS: fsys}); err != nil {
				t.Fatal(err)
			}
			img, err := OpenDir(dir, OpenOptions{FS: fsys})
			if err != nil {
				t.Fatal(err)
			}
			c := img.Chain()
			durableData := pattern(1, cs)
			mustWrite(t, c, 0, durableData)
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			fsys.arm(tc.sync, tc.meta)
			errs := tc.trigger(img)
			if fsys.triggered != 1 {
				t.Fatalf("fault not hit (%v)", errs)
			}
			if errors.Join(errs...) == nil {
				t.Fatal("every step succeeded although a sync failed")
			}
			// The fault is gone; the chain must stay failed regardless.
			if err := c.Flush(); !errors.Is(err, ErrSyncFailed) {
				t.Fatalf("a later flush: %v, want ErrSyncFailed", err)
			}
			later := map[string]func() error{
				"flush": c.Flush,
				"write": func() error { _, err := c.WriteAt(pattern(3, 4096), 0); return err },
				"allocating write": func() error {
					_, err := c.WriteAt(pattern(3, 4096), 5*cs)
					return err
				},
				"discard":  func() error { return c.Discard(0, cs) },
				"snapshot": func() error { _, err := img.Snapshot(SnapshotOptions{}); return err },
				"grow":     func() error { return img.Grow(16 << 20) },
			}
			for name, op := range later {
				if err := op(); !errors.Is(err, ErrSyncFailed) {
					t.Errorf("%s after the failure: %v, want ErrSyncFailed", name, err)
				}
			}
			if !errors.Is(c.Err(), ErrSyncFailed) {
				t.Fatalf("Err() = %v, want ErrSyncFailed", c.Err())
			}
			if got := mustRead(t, c, 0, cs); !bytes.Equal(got, durableData) {
				t.Fatal("reads changed after the failure")
			}
			if err := img.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			r, err := checkFS(mem, dir, false)
			if err != nil || !r.OK() {
				t.Fatalf("check: %v %+v", err, r)
			}
			if r.Clean() {
				t.Fatal("a failed chain was closed cleanly: the next open would not check it")
			}
			img, err = OpenDir(dir, OpenOptions{FS: mem})
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer img.Close()
			if got := mustRead(t, img.Chain(), 0, cs); !bytes.Equal(got, durableData) {
				t.Fatal("flushed data lost")
			}
			if err := img.Chain().Err(); err != nil {
				t.Fatalf("reopened chain still failed: %v", err)
			}
		})
	}
}
