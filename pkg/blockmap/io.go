package blockmap

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

// file is the Disk as pkg/fuse sees it: block-device semantics (no growing
// by writing, zeros to the end), the Quiesce gate and the watchdog clock
// around every Disk call.
type file struct{ s *Server }

var _ fuse.File = file{}

// begin admits a request through the Quiesce gate and starts its watchdog
// clock; the returned slot goes to end.
func (s *Server) begin() int {
	s.gate.enter()
	return s.wd.begin()
}

func (s *Server) end(slot int) {
	s.wd.end(slot)
	s.gate.exit()
}

func (f file) Size() int64 { return f.s.disk.Size() }

// ReadAt behaves like pread on a regular file of Size bytes: short at the
// end, empty past it.
func (f file) ReadAt(p []byte, off int64) (int, unix.Errno) {
	s := f.s
	slot := s.begin()
	defer s.end(slot)
	size := s.disk.Size()
	if off >= size {
		return 0, 0
	}
	if rest := size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := s.disk.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		s.errs.log(s.log, "read", off, err)
		return 0, unix.EIO
	}
	// Within Size every byte is defined: a Disk that stops early (sparse
	// tail) means zeros, and a short answer would look like EOF.
	clear(p[n:])
	return len(p), 0
}

// WriteAt refuses to go past Size (a disk cannot grow by writing, like a
// block device: ENOSPC) and writes the part that fits.
func (f file) WriteAt(p []byte, off int64) (int, unix.Errno) {
	s := f.s
	slot := s.begin()
	defer s.end(slot)
	size := s.disk.Size()
	if off >= size {
		return 0, unix.ENOSPC
	}
	if rest := size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := s.disk.WriteAt(p, off)
	if err != nil {
		s.errs.log(s.log, "write", off, err)
		return 0, unix.EIO
	}
	return n, 0
}

// Flush (every close of a descriptor) and Fsync both make the disk
// durable: loop detaching closes its file, and that must not lose data.
func (f file) Flush() unix.Errno {
	s := f.s
	slot := s.begin()
	defer s.end(slot)
	if err := s.disk.Flush(); err != nil {
		s.errs.log(s.log, "flush", 0, err)
		return unix.EIO
	}
	return 0
}

// Fallocate maps fallocate(2) onto the Disk. It never answers ENOSYS or
// EOPNOTSUPP: the kernel remembers either (fc->no_fallocate) for the
// lifetime of the mount and the loop device above loses discard for good.
// The FUSE kernel side only forwards KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE.
func (f file) Fallocate(off, length int64, mode uint32) unix.Errno {
	s := f.s
	end := off + length
	if off < 0 || length <= 0 || end < off {
		return unix.EINVAL
	}
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	op := mode &^ unix.FALLOC_FL_KEEP_SIZE
	if op != 0 && op != unix.FALLOC_FL_PUNCH_HOLE && op != unix.FALLOC_FL_ZERO_RANGE {
		return unix.EINVAL
	}
	slot := s.begin()
	defer s.end(slot)
	size := s.disk.Size()
	if !keep && end > size {
		return unix.EFBIG // would have to grow the disk
	}
	if op == 0 {
		return 0 // preallocation: nothing to reserve on a thin disk
	}
	end = min(end, size)
	if off >= end {
		return 0
	}
	if err := s.disk.Discard(off, end-off); err != nil {
		s.errs.log(s.log, "discard", off, err)
		return unix.EIO
	}
	return 0
}

// Resized makes the kernel's size of the file match disk.Size(). loop's
// LOOP_SET_CAPACITY reads the cached i_size of the FUSE inode without
// asking the server, so the cache must be refreshed first: invalidate the
// inode's attributes, then stat with AT_STATX_FORCE_SYNC, which makes the
// kernel fetch them (GETATTR) and store the new i_size. It goes through
// the root descriptor, so the mount path need not be visible.
func (s *Server) Resized() error {
	if err := s.fuse.InvalidateFile(); err != nil {
		return fmt.Errorf("blockmap: %w", err)
	}
	s.rootMu.RLock()
	defer s.rootMu.RUnlock()
	dirfd, name := unix.AT_FDCWD, s.FilePath()
	if s.conn.Root != nil {
		dirfd, name = int(s.conn.Root.Fd()), s.opts.FileName
	}
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, name, unix.AT_STATX_FORCE_SYNC, unix.STATX_SIZE, &stx); err != nil {
		return fmt.Errorf("blockmap: stat %s: %w", s.FilePath(), err)
	}
	if want := s.disk.Size(); int64(stx.Size) != want {
		return fmt.Errorf("blockmap: kernel size %d after refresh, disk size %d", stx.Size, want)
	}
	return nil
}

// errorLog rate-limits Disk error logging: a failing disk fails every
// request, and logging each would flood the log and cost more than the I/O.
// It logs the 1st, 2nd, 4th, 8th, ... error.
type errorLog struct{ n atomic.Uint64 }

func (e *errorLog) log(l *slog.Logger, op string, off int64, err error) {
	n := e.n.Add(1)
	if bits.OnesCount64(n) == 1 {
		l.Error("disk error, answering EIO", "op", op, "offset", off, "count", n, "err", err)
	}
}
