package fuse

import (
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// cacheTTL is how long the kernel may trust names and attributes. Only
// the server changes them, and InvalidateFile refreshes the size
// explicitly, so a long TTL saves GETATTR round trips.
const cacheTTL = time.Hour

// dispatch answers one request of the fixed namespace.
func (s *Server) dispatch(req *Request, rep *Reply) {
	node := req.Header.NodeID
	switch req.Header.Opcode {
	case OpRead:
		s.read(node, &req.Read, rep)
	case OpWrite:
		s.write(node, req, rep)
	case OpFlush, OpFsync:
		s.flush(node, rep)
	case OpFallocate:
		s.fallocate(node, &req.Fallocate, rep)
	case OpLookup:
		s.lookup(node, req.Name, rep)
	case OpGetattr:
		s.getattr(node, rep)
	case OpSetattr:
		s.setattr(node, &req.Setattr, rep)
	case OpOpen:
		s.open(node, rep)
	case OpOpendir:
		s.opendir(node, rep)
	case OpReaddir:
		s.readdir(node, &req.Read, rep)
	case OpStatfs:
		s.statfs(rep)
	case OpRelease, OpReleasedir, OpDestroy:
		// Nothing is kept per open file; the empty reply is the answer.
	case OpForget, OpBatchForget:
		rep.NoReply() // both nodes are static: nothing to forget
	case OpInterrupt:
		// No request here can be cut short. ENOSYS to the interrupt's
		// unique (bit 0 set) makes the kernel stop sending interrupts.
		rep.Fail(unix.ENOSYS)
	case OpInit:
		rep.Fail(unix.EPROTO) // the connection is initialised already
	default:
		// STATX, GETXATTR, ACCESS, namespace changes...: ENOSYS; for
		// most the kernel then stops asking.
		rep.Fail(unix.ENOSYS)
	}
}

func (s *Server) fileAttr() Attr {
	size := s.cfg.File.Size()
	return Attr{Ino: FileID, Mode: unix.S_IFREG | 0o600, Nlink: 1,
		Size: uint64(size), Blocks: uint64(size+511) / 512, Blksize: 4096}
}

func dirAttr() Attr {
	return Attr{Ino: RootID, Mode: unix.S_IFDIR | 0o700, Nlink: 2}
}

func (s *Server) attr(node uint64) (Attr, bool) {
	switch node {
	case RootID:
		return dirAttr(), true
	case FileID:
		return s.fileAttr(), true
	}
	return Attr{}, false
}

func (s *Server) lookup(parent uint64, name []byte, rep *Reply) {
	if parent != RootID || string(name) != s.cfg.FileName {
		rep.Fail(unix.ENOENT)
		return
	}
	a := s.fileAttr()
	rep.EntryOut(FileID, 1, cacheTTL, &a)
}

func (s *Server) getattr(node uint64, rep *Reply) {
	a, ok := s.attr(node)
	if !ok {
		rep.Fail(unix.ENOENT)
		return
	}
	rep.AttrOut(cacheTTL, &a)
}

// setattr accepts mode/owner/time changes as no-ops (cp -p or touch should
// not fail) but refuses to change the size: like a block device, whose
// ftruncate fails with EINVAL, the size changes only from the server side.
func (s *Server) setattr(node uint64, in *SetattrIn, rep *Reply) {
	if in.SizeSet() && node == FileID && int64(in.Size) != s.cfg.File.Size() {
		rep.Fail(unix.EINVAL)
		return
	}
	s.getattr(node, rep)
}

// open turns on what makes loop on this file fast: DIRECT_IO keeps the
// kernel's page cache out (loop and the file system above it cache
// already), PARALLEL_DIRECT_WRITES lets writes to the file run
// concurrently instead of one at a time under the inode lock.
func (s *Server) open(node uint64, rep *Reply) {
	if node != FileID {
		rep.Fail(unix.EISDIR)
		return
	}
	rep.OpenOut(0, FopenDirectIO|FopenParallelDirectWrites)
}

func (s *Server) opendir(node uint64, rep *Reply) {
	if node != RootID {
		rep.Fail(unix.ENOTDIR)
		return
	}
	rep.OpenOut(0, 0)
}

// readdir lists the file so that ls on the mount helps debugging. Offsets
// are entry indexes; the kernel passes back the last one it consumed.
func (s *Server) readdir(node uint64, in *ReadIn, rep *Reply) {
	if node != RootID {
		rep.Fail(unix.ENOTDIR)
		return
	}
	entries := [...]Dirent{
		{Ino: RootID, Off: 1, Type: unix.DT_DIR, Name: "."},
		{Ino: RootID, Off: 2, Type: unix.DT_DIR, Name: ".."},
		{Ino: FileID, Off: 3, Type: unix.DT_REG, Name: s.cfg.FileName},
	}
	out := rep.Buf[:0]
	for i := in.Offset; i < uint64(len(entries)); i++ {
		var ok bool
		if out, ok = AppendDirent(out, int(in.Size), entries[i]); !ok {
			break
		}
	}
	rep.SetData(out)
}

func (s *Server) statfs(rep *Reply) {
	rep.StatfsOut(&Statfs{Blocks: uint64(s.cfg.File.Size()) / 4096, Files: 2,
		Bsize: 4096, Frsize: 4096, NameLen: 255})
}

// validRange checks offsets from the kernel before they become int64.
func validRange(off, length uint64) bool {
	return off <= math.MaxInt64 && length <= math.MaxInt64-off
}

func (s *Server) read(node uint64, in *ReadIn, rep *Reply) {
	switch {
	case node != FileID:
		rep.Fail(unix.EISDIR)
	case int(in.Size) > len(rep.Buf) || !validRange(in.Offset, uint64(in.Size)):
		rep.Fail(unix.EINVAL)
	default:
		n, errno := s.cfg.File.ReadAt(rep.Buf[:in.Size], int64(in.Offset))
		if errno != 0 {
			rep.Fail(errno)
			return
		}
		rep.SetData(rep.Buf[:n])
	}
}

func (s *Server) write(node uint64, req *Request, rep *Reply) {
	switch {
	case node != FileID:
		rep.Fail(unix.EISDIR)
	case !validRange(req.Write.Offset, uint64(len(req.Data))):
		rep.Fail(unix.EINVAL)
	default:
		n, errno := s.cfg.File.WriteAt(req.Data, int64(req.Write.Offset))
		if errno != 0 {
			rep.Fail(errno)
			return
		}
		rep.WriteOut(uint32(n))
	}
}

func (s *Server) flush(node uint64, rep *Reply) {
	if node != FileID {
		return // fsync of the directory: nothing to do
	}
	if errno := s.cfg.File.Flush(); errno != 0 {
		rep.Fail(errno)
	}
}

func (s *Server) fallocate(node uint64, in *FallocateIn, rep *Reply) {
	switch {
	case node != FileID:
		rep.Fail(unix.EISDIR)
	case in.Length == 0 || !validRange(in.Offset, in.Length):
		rep.Fail(unix.EINVAL)
	default:
		if errno := s.cfg.File.Fallocate(int64(in.Offset), int64(in.Length), in.Mode); errno != 0 {
			rep.Fail(errno)
		}
	}
}
