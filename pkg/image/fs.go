package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/csi-ploop/csi-ploop/pkg/durable"
	"golang.org/x/sys/unix"
)

// File is what a delta needs from its backing file. The seam exists so tests
// can cut persistence off at any operation and simulate a crash.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error // data (and the size) durable; fdatasync for real files
	Truncate(size int64) error
	// Allocate reserves disk space for [off, off+length), extending the
	// file if needed; what was not written reads as zeros.
	Allocate(off, length int64) error
	Size() (int64, error)
	Punch(off, length int64) error // deallocate; the range reads back as zeros
	// Data returns the first range [start, stop) of [off, end) that may hold
	// data (SEEK_DATA, SEEK_HOLE); start == end if the rest is a hole. Where
	// holes cannot be told, everything is data.
	Data(off, end int64) (start, stop int64, err error)
	Close() error
}

// FS opens files and does the directory operations the durability rules need.
type FS interface {
	Create(path string) (File, error) // new file; fails if it exists
	Open(path string, writable bool) (File, error)
	Rename(oldPath, newPath string) error
	Remove(path string) error
	SyncDir(dir string) error
}

// durableFS lets pkg/durable write through an FS, so the crash harness cuts
// persistence at every step of a descriptor or delta creation too.
type durableFS struct{ FS }

func (d durableFS) CreateFile(path string) (durable.File, error) { return d.FS.Create(path) }

// OSFS is the real file system. With direct I/O, data files are opened with
// O_DIRECT so that I/O measures the disk, not the host page cache; unaligned
// requests fall back to a buffered descriptor of the same file.
type OSFS struct {
	direct bool
	bounce *bouncePools // shared by the files it opens: pools grow and shrink with load
}

// NewOSFS returns the real file system, with or without direct I/O.
func NewOSFS(direct bool) *OSFS {
	return &OSFS{direct: direct, bounce: &bouncePools{}}
}

// Create implements FS.
func (o *OSFS) Create(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f}, nil
}

// Open implements FS.
func (o *OSFS) Open(path string, writable bool) (File, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	of := &osFile{f: f, bounce: o.bounce}
	if o.direct {
		// Not every file system takes O_DIRECT (tmpfs does not): then stay buffered.
		if d, err := os.OpenFile(path, flag|unix.O_DIRECT, 0); err == nil {
			of.direct = d
		}
	}
	return of, nil
}

// onDisk is implemented by file systems whose paths are real files (OSFS,
// and wrappers that embed it): only there does the directory lock matter.
type onDisk interface{ realFiles() }

func (*OSFS) realFiles() {}

// Rename implements FS.
func (*OSFS) Rename(oldPath, newPath string) error { return os.Rename(oldPath, newPath) }

// Remove implements FS; a missing file is not an error, so retries are safe.
func (*OSFS) Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// SyncDir makes renames and creations in dir durable.
func (*OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

const directAlign = 4096

type osFile struct {
	f      *os.File
	direct *os.File // O_DIRECT descriptor of the same file, or nil
	bounce *bouncePools
}

func aligned(p []byte, off int64) bool {
	return off%directAlign == 0 && len(p)%directAlign == 0 && len(p) > 0
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error) {
	if o.direct != nil && aligned(p, off) {
		return o.bounce.directIO(p, off, o.direct.ReadAt, true)
	}
	return o.f.ReadAt(p, off)
}

func (o *osFile) WriteAt(p []byte, off int64) (int, error) {
	if o.direct != nil && aligned(p, off) {
		return o.bounce.directIO(p, off, o.direct.WriteAt, false)
	}
	return o.f.WriteAt(p, off)
}

func (o *osFile) Sync() error               { return unix.Fdatasync(int(o.f.Fd())) }
func (o *osFile) Truncate(size int64) error { return o.f.Truncate(size) }

func (o *osFile) Size() (int64, error) {
	st, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Allocate is fallocate(2) mode 0: the range gets unwritten extents, so a
// later write into it needs no block allocation (and on ext4 no exclusive
// inode lock). Where fallocate is not supported it only extends the file.
func (o *osFile) Allocate(off, length int64) error {
	err := unix.Fallocate(int(o.f.Fd()), 0, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return o.growTo(off + length)
	}
	return err
}

func (o *osFile) growTo(size int64) error {
	cur, err := o.Size()
	if err != nil || cur >= size {
		return err
	}
	return o.f.Truncate(size)
}

func (o *osFile) Punch(off, length int64) error {
	err := unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// No hole punching here: write zeros so the range still reads back as zeros.
		_, err = o.f.WriteAt(make([]byte, length), off)
	}
	return err
}

func (o *osFile) Data(off, end int64) (int64, int64, error) {
	fd := int(o.f.Fd())
	start, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO): // nothing but a hole past off
		return end, end, nil
	case err != nil: // no SEEK_DATA on this file system
		return off, end, nil
	case start >= end:
		return end, end, nil
	}
	stop, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return start, end, nil
	}
	return start, min(stop, end), nil
}

func (o *osFile) Close() error {
	var derr error
	if o.direct != nil {
		derr = o.direct.Close()
	}
	return errors.Join(o.f.Close(), derr)
}

// allocatedBytes reports the bytes the file system really stores for path.
func allocatedBytes(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return st.Blocks * 512, nil
}

// resolve returns file as an absolute path, relative names taken from dir.
func resolve(dir, file string) string {
	if filepath.IsAbs(file) {
		return filepath.Clean(file)
	}
	return filepath.Join(dir, file)
}
