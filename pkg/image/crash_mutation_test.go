package image

import (
	"sync"
	"testing"
)

// TestCrashHarnessCatchesDroppedDataSync is the harness's own test: with the
// fdatasync that must come between a cluster's data and its BAT entry taken
// out, some crash must leave the image wrong. Otherwise the crash test
// could not fail on the ordering bug it is there for.
func TestCrashHarnessCatchesDroppedDataSync(t *testing.T) {
	var dropped int
	errs := crashAtEveryOperation(t, func(m *memFS) FS {
		return &dropSyncBeforeBAT{memFS: m, dropped: &dropped}
	})
	if dropped == 0 {
		t.Fatal("no sync came right before a BAT write: the mutation did nothing")
	}
	if len(errs) == 0 {
		t.Fatalf("%d data syncs before BAT writes dropped, and every crash still verified", dropped)
	}
	t.Logf("without the data sync %d crashes were caught, e.g. %v", len(errs), errs[0])
}

// dropSyncBeforeBAT is memFS without the data sync before a BAT write: a
// Sync takes effect, but if the next operation is a write into the
// header/BAT area of the same file, the sync is undone (as if it had never
// been called) before that write. A sync that ends a flush stands.
type dropSyncBeforeBAT struct {
	*memFS
	mu      sync.Mutex
	held    *memFile // last synced file, with its state before that sync
	synced  []byte
	pending []memWrite
	dropped *int
}

// release forgets the last sync, first undoing it if next is a BAT write
// to the same file.
func (d *dropSyncBeforeBAT) release(f *memFile, batWrite bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.held != nil && batWrite && d.held == f {
		d.memFS.mu.Lock()
		f.n.synced, f.n.pending = d.synced, d.pending
		d.memFS.mu.Unlock()
		*d.dropped++
	}
	d.held = nil
}

func (d *dropSyncBeforeBAT) Create(path string) (File, error) {
	d.release(nil, false)
	f, err := d.memFS.Create(path)
	if err != nil {
		return nil, err
	}
	return &heldSyncFile{memFile: f.(*memFile), fs: d}, nil
}

func (d *dropSyncBeforeBAT) Open(path string, writable bool) (File, error) {
	d.release(nil, false)
	f, err := d.memFS.Open(path, writable)
	if err != nil {
		return nil, err
	}
	return &heldSyncFile{memFile: f.(*memFile), fs: d}, nil
}

func (d *dropSyncBeforeBAT) Rename(o, n string) error {
	d.release(nil, false)
	return d.memFS.Rename(o, n)
}

func (d *dropSyncBeforeBAT) Remove(p string) error {
	d.release(nil, false)
	return d.memFS.Remove(p)
}

func (d *dropSyncBeforeBAT) SyncDir(dir string) error {
	d.release(nil, false)
	return d.memFS.SyncDir(dir)
}

type heldSyncFile struct {
	*memFile
	fs *dropSyncBeforeBAT
}

func (f *heldSyncFile) Sync() error {
	f.fs.release(f.memFile, false)
	f.memFile.fs.mu.Lock()
	synced, pending := f.n.synced, f.n.pending
	f.memFile.fs.mu.Unlock()
	if err := f.memFile.Sync(); err != nil {
		return err
	}
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.fs.held, f.fs.synced, f.fs.pending = f.memFile, synced, pending
	return nil
}

func (f *heldSyncFile) WriteAt(p []byte, off int64) (int, error) {
	f.memFile.fs.mu.Lock()
	end := metadataEnd(f.n.data)
	f.memFile.fs.mu.Unlock()
	f.fs.release(f.memFile, off >= HeaderSize && off < end)
	return f.memFile.WriteAt(p, off)
}

func (f *heldSyncFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.release(f.memFile, false)
	return f.memFile.ReadAt(p, off)
}

func (f *heldSyncFile) Truncate(size int64) error {
	f.fs.release(f.memFile, false)
	return f.memFile.Truncate(size)
}

func (f *heldSyncFile) Punch(off, n int64) error {
	f.fs.release(f.memFile, false)
	return f.memFile.Punch(off, n)
}

func (f *heldSyncFile) Close() error {
	f.fs.release(f.memFile, false)
	return f.memFile.Close()
}
