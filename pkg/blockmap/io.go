package blockmap

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

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

// read behaves like pread on a regular file of Size bytes: short at the
// end, empty past it.
func (s *Server) read(p []byte, off int64) (int, fuse.Status) {
	slot := s.begin()
	defer s.end(slot)
	size := s.disk.Size()
	if off < 0 {
		return 0, fuse.EINVAL
	}
	if off >= size {
		return 0, fuse.OK
	}
	if rest := size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := s.disk.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		s.errs.log(s.log, "read", off, err)
		return 0, fuse.EIO
	}
	// Within Size every byte is defined: a Disk that stops early (sparse
	// tail) means zeros, and a short answer would look like EOF.
	clear(p[n:])
	return len(p), fuse.OK
}

// write refuses to go past Size (a disk cannot grow by writing, like a
// block device: ENOSPC) and writes the part that fits.
func (s *Server) write(p []byte, off int64) (int, fuse.Status) {
	slot := s.begin()
	defer s.end(slot)
	size := s.disk.Size()
	if off < 0 {
		return 0, fuse.EINVAL
	}
	if off >= size {
		return 0, fuse.Status(unix.ENOSPC)
	}
	if rest := size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := s.disk.WriteAt(p, off)
	if err != nil {
		s.errs.log(s.log, "write", off, err)
		return 0, fuse.EIO
	}
	return n, fuse.OK
}

func (s *Server) flush() fuse.Status {
	slot := s.begin()
	defer s.end(slot)
	if err := s.disk.Flush(); err != nil {
		s.errs.log(s.log, "flush", 0, err)
		return fuse.EIO
	}
	return fuse.OK
}

// fallocate maps fallocate(2) onto the Disk. It never answers ENOSYS or
// EOPNOTSUPP: the kernel remembers either (fc->no_fallocate) for the
// lifetime of the mount and the loop device above loses discard for good.
// The FUSE kernel side only forwards KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE.
func (s *Server) fallocate(off, length int64, mode uint32) fuse.Status {
	end := off + length
	if off < 0 || length <= 0 || end < off {
		return fuse.EINVAL
	}
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	op := mode &^ unix.FALLOC_FL_KEEP_SIZE
	if op != 0 && op != unix.FALLOC_FL_PUNCH_HOLE && op != unix.FALLOC_FL_ZERO_RANGE {
		return fuse.EINVAL
	}
	slot := s.begin()
	defer s.end(slot)
	size := s.disk.Size()
	if !keep && end > size {
		return fuse.Status(unix.EFBIG) // would have to grow the disk
	}
	if op == 0 {
		return fuse.OK // preallocation: nothing to reserve on a thin disk
	}
	end = min(end, size)
	if off >= end {
		return fuse.OK
	}
	if err := s.disk.Discard(off, end-off); err != nil {
		s.errs.log(s.log, "discard", off, err)
		return fuse.EIO
	}
	return fuse.OK
}

// Resized makes the kernel's size of the file match disk.Size(). loop's
// LOOP_SET_CAPACITY reads the cached i_size of the FUSE inode without
// asking the server, so the cache must be refreshed first: invalidate the
// inode's attributes, then stat with AT_STATX_FORCE_SYNC, which makes the
// kernel fetch them (GETATTR) and store the new i_size.
func (s *Server) Resized() error {
	// Offset -1: attributes only; there is no page cache (direct I/O).
	// ENOENT means the kernel holds no inode yet: nothing is stale.
	if st := s.fuse.InodeNotify(fileIno, -1, 0); !st.Ok() && st != fuse.ENOENT {
		return fmt.Errorf("blockmap: invalidate inode: %w", unix.Errno(st))
	}
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, s.filePath, unix.AT_STATX_FORCE_SYNC, unix.STATX_SIZE, &stx)
	if err != nil {
		return fmt.Errorf("blockmap: stat %s: %w", s.filePath, err)
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
