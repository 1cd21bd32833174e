package fuse

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrMalformed: a request from the kernel does not parse. The server
// answers it EINVAL (or EIO when not even its header is whole) and logs it.
var ErrMalformed = errors.New("fuse: malformed request")

// Request is one parsed request. Only the fields of its opcode are set;
// slices point into the transport's buffer and are valid until the reply.
type Request struct {
	Header InHeader

	Init      InitIn      // INIT
	Name      []byte      // LOOKUP: the name, without its NUL
	Getattr   GetattrIn   // GETATTR
	Setattr   SetattrIn   // SETATTR
	Open      OpenIn      // OPEN, OPENDIR
	Read      ReadIn      // READ, READDIR
	Write     WriteIn     // WRITE
	Data      []byte      // WRITE payload
	Release   ReleaseIn   // RELEASE, RELEASEDIR
	Flush     FlushIn     // FLUSH
	Fsync     FsyncIn     // FSYNC
	Fallocate FallocateIn // FALLOCATE
	Interrupt uint64      // INTERRUPT: unique of the interrupted request
	Forgets   uint32      // FORGET (1) and BATCH_FORGET (count)
}

// InitIn is struct fuse_init_in.
type InitIn struct {
	Major, Minor uint32
	MaxReadahead uint32
	Flags        uint64 // flags | flags2<<32 (flags2 only with FlagInitExt)
}

// GetattrIn is struct fuse_getattr_in.
type GetattrIn struct {
	Flags uint32
	Fh    uint64
}

// SetattrIn is struct fuse_setattr_in (the fields this server looks at).
type SetattrIn struct {
	Valid uint32
	Fh    uint64
	Size  uint64
	Mode  uint32
}

// SizeSet reports whether the request changes the size.
func (s *SetattrIn) SizeSet() bool { return s.Valid&fattrSize != 0 }

// OpenIn is struct fuse_open_in.
type OpenIn struct{ Flags, OpenFlags uint32 }

// ReadIn is struct fuse_read_in.
type ReadIn struct {
	Fh     uint64
	Offset uint64
	Size   uint32
	Flags  uint32
}

// WriteIn is struct fuse_write_in.
type WriteIn struct {
	Fh         uint64
	Offset     uint64
	Size       uint32
	WriteFlags uint32
}

// ReleaseIn is struct fuse_release_in.
type ReleaseIn struct {
	Fh           uint64
	Flags        uint32
	ReleaseFlags uint32
}

// FlushIn is struct fuse_flush_in.
type FlushIn struct{ Fh uint64 }

// FsyncIn is struct fuse_fsync_in.
type FsyncIn struct {
	Fh    uint64
	Flags uint32
}

// FallocateIn is struct fuse_fallocate_in.
type FallocateIn struct {
	Fh     uint64
	Offset uint64
	Length uint64
	Mode   uint32
}

// NeedsReply reports whether the kernel waits for an answer to op.
func NeedsReply(op uint32) bool {
	return op != OpForget && op != OpBatchForget
}

// ParseRequest decodes the request in b (exactly what one read returned)
// into r, validating every length against b. It never panics; on error r
// holds whatever header fields could be read (Header.Unique is set when
// len(b) >= 16, so the caller can still answer). Unknown opcodes parse
// fine: only the header is decoded and the caller answers ENOSYS.
func ParseRequest(b []byte, r *Request) error {
	*r = Request{}
	if len(b) < InHeaderSize {
		if len(b) >= 16 {
			r.Header.Opcode = le.Uint32(b[4:])
			r.Header.Unique = le.Uint64(b[8:])
		}
		return fmt.Errorf("%w: %d bytes, shorter than the header", ErrMalformed, len(b))
	}
	r.Header.decode(b)
	if int(r.Header.Len) != len(b) {
		return fmt.Errorf("%w: header says %d bytes, read %d", ErrMalformed, r.Header.Len, len(b))
	}
	args := b[InHeaderSize:]
	ext := int(r.Header.TotalExtLen) * 8
	if ext > len(args) {
		return fmt.Errorf("%w: %d extension bytes in %d argument bytes", ErrMalformed, ext, len(args))
	}
	// Extensions (security context, groups) follow the arguments; none is
	// negotiated, but they are stripped rather than misread.
	return parseArgs(r, args[:len(args)-ext])
}

// parseArgs decodes the arguments of r.Header.Opcode from a, which holds
// them followed by the payload (WRITE data, LOOKUP name) as /dev/fuse
// delivers them. A transport that gets the payload apart (io_uring) reuses
// the per-opcode decoders below for the fixed part.
func parseArgs(r *Request, a []byte) error {
	op := r.Header.Opcode
	need := argSize(op)
	if len(a) < need {
		return fmt.Errorf("%w: opcode %d has %d argument bytes, needs %d", ErrMalformed, op, len(a), need)
	}
	switch op {
	case OpInit:
		return decodeInitIn(&r.Init, a)
	case OpLookup:
		return decodeName(r, a)
	case OpGetattr:
		r.Getattr = GetattrIn{Flags: le.Uint32(a[0:]), Fh: le.Uint64(a[8:])}
	case OpSetattr:
		r.Setattr = SetattrIn{Valid: le.Uint32(a[0:]), Fh: le.Uint64(a[8:]), Size: le.Uint64(a[16:]), Mode: le.Uint32(a[68:])}
	case OpOpen, OpOpendir:
		r.Open = OpenIn{Flags: le.Uint32(a[0:]), OpenFlags: le.Uint32(a[4:])}
	case OpRead, OpReaddir:
		r.Read = ReadIn{Fh: le.Uint64(a[0:]), Offset: le.Uint64(a[8:]), Size: le.Uint32(a[16:]), Flags: le.Uint32(a[32:])}
	case OpWrite:
		return decodeWrite(r, a)
	case OpRelease, OpReleasedir:
		r.Release = ReleaseIn{Fh: le.Uint64(a[0:]), Flags: le.Uint32(a[8:]), ReleaseFlags: le.Uint32(a[12:])}
	case OpFlush:
		r.Flush = FlushIn{Fh: le.Uint64(a[0:])}
	case OpFsync:
		r.Fsync = FsyncIn{Fh: le.Uint64(a[0:]), Flags: le.Uint32(a[8:])}
	case OpFallocate:
		r.Fallocate = FallocateIn{Fh: le.Uint64(a[0:]), Offset: le.Uint64(a[8:]), Length: le.Uint64(a[16:]), Mode: le.Uint32(a[24:])}
	case OpInterrupt:
		r.Interrupt = le.Uint64(a[0:])
	case OpForget:
		r.Forgets = 1
	case OpBatchForget:
		return decodeBatchForget(r, a)
	}
	return nil
}

// argSize is the fixed argument size of op (0 for opcodes without
// arguments or unknown to this package).
func argSize(op uint32) int {
	switch op {
	case OpInit:
		return initInMinSize
	case OpLookup:
		return 1 // at least the NUL
	case OpGetattr:
		return getattrInSize
	case OpSetattr:
		return setattrInSize
	case OpOpen, OpOpendir:
		return openInSize
	case OpRead, OpReaddir:
		return readInSize
	case OpWrite:
		return writeInSize
	case OpRelease, OpReleasedir:
		return releaseInSize
	case OpFlush:
		return flushInSize
	case OpFsync:
		return fsyncInSize
	case OpFallocate:
		return fallocateInSize
	case OpInterrupt:
		return interruptInSize
	case OpForget:
		return forgetInSize
	case OpBatchForget:
		return batchForgetSize
	}
	return 0
}

func decodeInitIn(in *InitIn, a []byte) error {
	*in = InitIn{Major: le.Uint32(a[0:]), Minor: le.Uint32(a[4:]), MaxReadahead: le.Uint32(a[8:]), Flags: uint64(le.Uint32(a[12:]))}
	if in.Flags&FlagInitExt != 0 {
		if len(a) < initInMinSize+4 {
			return fmt.Errorf("%w: INIT_EXT without flags2 (%d bytes)", ErrMalformed, len(a))
		}
		in.Flags |= uint64(le.Uint32(a[16:])) << 32
	}
	return nil
}

// decodeName takes a NUL-terminated name; anything after the NUL (there
// is nothing for LOOKUP) is ignored.
func decodeName(r *Request, a []byte) error {
	n := bytes.IndexByte(a, 0)
	if n < 0 {
		return fmt.Errorf("%w: name without NUL", ErrMalformed)
	}
	r.Name = a[:n]
	return nil
}

func decodeWrite(r *Request, a []byte) error {
	r.Write = WriteIn{Fh: le.Uint64(a[0:]), Offset: le.Uint64(a[8:]), Size: le.Uint32(a[16:]), WriteFlags: le.Uint32(a[20:])}
	data := a[writeInSize:]
	if uint64(r.Write.Size) != uint64(len(data)) {
		return fmt.Errorf("%w: WRITE of %d bytes carries %d", ErrMalformed, r.Write.Size, len(data))
	}
	r.Data = data
	return nil
}

func decodeBatchForget(r *Request, a []byte) error {
	count := le.Uint32(a[0:])
	if uint64(count)*forgetOneSize > uint64(len(a)-batchForgetSize) {
		return fmt.Errorf("%w: BATCH_FORGET of %d entries in %d bytes", ErrMalformed, count, len(a))
	}
	r.Forgets = count
	return nil
}
