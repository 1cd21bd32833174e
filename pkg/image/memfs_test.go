package image

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// memFS is an in-memory FS that models what survives a power cut. Every
// mutating operation is counted; after `limit` of them every operation fails
// with errCrashed (the machine is gone). reboot then builds the file system a
// restarted machine would see, in one of two models:
//   - keepAll: every completed operation persisted, in order (a cut);
//   - syncedOnly: only what fsync/fdatasync and directory syncs made durable;
//   - metadataFirst: like syncedOnly, plus every unsynced write into the
//     header and BAT area of a delta and every size change, but no unsynced
//     data: the page cache wrote the metadata back first. This is the order
//     ploop's rule (data before the BAT entry that points at it) protects
//     against.
type memFS struct {
	mu      sync.Mutex
	names   map[string]*memNode // what the running system sees
	durable map[string]*memNode // names made durable by SyncDir
	ops     int
	limit   int // -1: never crash
	// kill, if >= 0, is the operation count at which the process dies: the
	// mutating operation panics with errKilled before taking effect, so no
	// code of the dead process runs on (SIGKILL); the kernel, and with it
	// every completed operation, lives on.
	kill   int
	nextID uint64 // inode numbers (Identity)
}

type memNode struct {
	id      uint64
	data    []byte
	synced  []byte
	pending []memWrite // unsynced writes and truncates since the last sync
}

type memWrite struct {
	off      int64
	data     []byte
	truncate int64 // >= 0: a truncate to this size
}

var (
	errCrashed = errors.New("simulated crash: machine is down")
	errKilled  = errors.New("simulated process crash: SIGKILL")
)

func newMemFS() *memFS {
	return &memFS{names: map[string]*memNode{}, durable: map[string]*memNode{}, limit: -1, kill: -1}
}

type crashModel int

const (
	keepAll crashModel = iota
	syncedOnly
	metadataFirst
)

// reboot returns the file system as found after the crash.
func (m *memFS) reboot(model crashModel) *memFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := newMemFS()
	out.nextID = m.nextID
	src := m.names
	if model != keepAll {
		src = m.durable
	}
	for name, n := range src {
		data := n.data
		if model != keepAll {
			data = n.synced
		}
		c := append([]byte(nil), data...)
		if model == metadataFirst {
			c = n.replayMetadata(c)
		}
		node := &memNode{id: n.id, data: c, synced: append([]byte(nil), c...)}
		out.names[name] = node
		out.durable[name] = node
	}
	return out
}

// step counts a mutating operation and reports whether the machine is down.
func (m *memFS) step() error {
	if m.limit >= 0 && m.ops >= m.limit {
		return errCrashed
	}
	if m.kill >= 0 && m.ops >= m.kill {
		panic(errKilled)
	}
	m.ops++
	return nil
}

func (m *memFS) Create(path string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step(); err != nil {
		return nil, err
	}
	if _, ok := m.names[path]; ok {
		return nil, os.ErrExist
	}
	m.nextID++
	n := &memNode{id: m.nextID}
	m.names[path] = n
	return &memFile{fs: m, n: n, writable: true}, nil
}

func (m *memFS) Open(path string, writable bool) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.limit >= 0 && m.ops >= m.limit {
		return nil, errCrashed
	}
	n, ok := m.names[path]
	if !ok {
		return nil, &os.PathError{Op: "open", Path: path, Err: os.ErrNotExist}
	}
	return &memFile{fs: m, n: n, writable: writable}, nil
}

func (m *memFS) Rename(oldPath, newPath string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step(); err != nil {
		return err
	}
	n, ok := m.names[oldPath]
	if !ok {
		return os.ErrNotExist
	}
	delete(m.names, oldPath)
	m.names[newPath] = n
	return nil
}

func (m *memFS) Remove(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step(); err != nil {
		return err
	}
	delete(m.names, path)
	return nil
}

// SyncDir makes the directory's current entries durable.
func (m *memFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step(); err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	for name := range m.durable {
		if filepath.Dir(name) == dir {
			delete(m.durable, name)
		}
	}
	for name, n := range m.names {
		if filepath.Dir(name) == dir {
			m.durable[name] = n
		}
	}
	return nil
}

func (n *memNode) replayMetadata(c []byte) []byte {
	end := metadataEnd(n.data)
	for _, w := range n.pending {
		switch {
		case w.truncate >= 0:
			c = resize(c, w.truncate)
		case w.off < end:
			c = resize(c, max(int64(len(c)), w.off+int64(len(w.data))))
			copy(c[w.off:], w.data)
		}
	}
	return c
}

// metadataEnd is where the data of a delta file starts: writes below it
// are its header and BAT. Other files: the first HeaderSize bytes.
func metadataEnd(data []byte) int64 {
	if len(data) >= HeaderSize {
		if h, err := DecodeHeader(data[:HeaderSize], -1); err == nil {
			return h.DataStart()
		}
	}
	return HeaderSize
}

func resize(b []byte, size int64) []byte {
	if size > int64(len(b)) {
		return append(b, make([]byte, size-int64(len(b)))...)
	}
	return b[:size]
}

type memFile struct {
	fs       *memFS
	n        *memNode
	writable bool
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.limit >= 0 && f.fs.ops >= f.fs.limit {
		return 0, errCrashed
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) mutate(fn func()) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if !f.writable {
		return os.ErrPermission
	}
	if err := f.fs.step(); err != nil {
		return err
	}
	fn()
	return nil
}

func (f *memFile) grow(size int64) {
	if size > int64(len(f.n.data)) {
		f.n.data = append(f.n.data, make([]byte, size-int64(len(f.n.data)))...)
	}
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	err := f.mutate(func() {
		f.grow(off + int64(len(p)))
		copy(f.n.data[off:], p)
		f.n.pending = append(f.n.pending, memWrite{off: off, data: append([]byte(nil), p...), truncate: -1})
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *memFile) Sync() error {
	return f.mutate(func() {
		f.n.synced = append([]byte(nil), f.n.data...)
		f.n.pending = nil
	})
}

func (f *memFile) Truncate(size int64) error {
	return f.mutate(func() {
		f.grow(size)
		f.n.data = f.n.data[:size]
		f.n.pending = append(f.n.pending, memWrite{truncate: size})
	})
}

// Allocate extends the file like a truncate would (a size change that
// survives only once synced); space reservation is not modelled.
func (f *memFile) Allocate(off, length int64) error {
	return f.mutate(func() {
		if size := off + length; size > int64(len(f.n.data)) {
			f.grow(size)
			f.n.pending = append(f.n.pending, memWrite{truncate: size})
		}
	})
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.n.data)), nil
}

func (f *memFile) Punch(off, length int64) error {
	return f.mutate(func() {
		end := min(off+length, int64(len(f.n.data)))
		if off < end {
			clear(f.n.data[off:end])
		}
	})
}

// Data models SEEK_DATA/SEEK_HOLE: a 4 KiB block is a hole when it is all
// zeros (unwritten, punched, or written with zeros: a file system may
// store either way).
func (f *memFile) Data(off, end int64) (int64, int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.limit >= 0 && f.fs.ops >= f.fs.limit {
		return 0, 0, errCrashed
	}
	limit := min(end, int64(len(f.n.data)))
	isData := func(b int64) bool {
		return !allZero(f.n.data[b*memBlock : min((b+1)*memBlock, int64(len(f.n.data)))])
	}
	b := off / memBlock
	for b*memBlock < limit && !isData(b) {
		b++
	}
	start := max(off, b*memBlock)
	if start >= limit {
		return end, end, nil
	}
	for b*memBlock < limit && isData(b) {
		b++
	}
	return start, min(b*memBlock, limit), nil
}

const memBlock = 4096

func (f *memFile) Close() error { return nil }

// Identity implements identified: one device, a node number per file.
func (f *memFile) Identity() (FileIdentity, error) {
	return FileIdentity{Dev: 1, Ino: f.n.id}, nil
}
