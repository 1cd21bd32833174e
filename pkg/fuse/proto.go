// Package fuse is a small FUSE server for one flat file: the kernel
// protocol (explicit little-endian encode/decode with validation), mounting
// without serving, the INIT negotiation, serving an already initialised
// connection (a successor after a hand-over or a crash, optionally asking
// the kernel to re-send what a dead predecessor had taken), notifications,
// and the transports that move requests between the kernel and the
// handlers. The classic /dev/fuse transport is the one built; the Transport
// interface leaves room for FUSE over io_uring.
//
// The namespace is fixed: the root directory (node 1) holds one regular
// file (node 2) whose data a File provides. Everything else the kernel may
// ask is answered ENOSYS, which for most operations makes the kernel stop
// asking.
//
// Protocol facts used here are from include/uapi/linux/fuse.h (7.45) and
// fs/fuse/dev.c and inode.c of Linux 6.18.
package fuse

import (
	"encoding/binary"
)

// Protocol versions. The negotiated minor is the smaller of the kernel's
// and ours; below MinMinor the structures this package encodes differ.
const (
	KernelVersion = 7
	OurMinor      = 45
	MinMinor      = 28 // max_pages in INIT (Linux 4.20)
)

// Node IDs of the fixed namespace.
const (
	RootID = 1
	FileID = 2
)

// Opcodes (enum fuse_opcode) this package knows by name.
const (
	OpLookup      = 1
	OpForget      = 2
	OpGetattr     = 3
	OpSetattr     = 4
	OpOpen        = 14
	OpRead        = 15
	OpWrite       = 16
	OpStatfs      = 17
	OpRelease     = 18
	OpFsync       = 20
	OpGetxattr    = 22
	OpListxattr   = 23
	OpFlush       = 25
	OpInit        = 26
	OpOpendir     = 27
	OpReaddir     = 28
	OpReleasedir  = 29
	OpInterrupt   = 36
	OpDestroy     = 38
	OpBatchForget = 42
	OpFallocate   = 43
	OpStatx       = 52
)

// INIT flags (flags | flags2<<32).
const (
	FlagAsyncRead       = 1 << 0
	FlagBigWrites       = 1 << 5
	FlagAsyncDIO        = 1 << 15
	FlagParallelDirops  = 1 << 18
	FlagMaxPages        = 1 << 22
	FlagInitExt         = 1 << 30
	FlagHasResend       = 1 << 39
	FlagOverIOUring     = 1 << 41
	FlagRequestTimeout  = 1 << 42
	flagsNeedingInitExt = ^uint64(0xffffffff)
)

// OPEN reply flags.
const (
	FopenDirectIO             = 1 << 0
	FopenParallelDirectWrites = 1 << 6
)

// SETATTR valid bits.
const fattrSize = 1 << 3

// Notification codes (enum fuse_notify_code).
const (
	NotifyInvalInode = 2
	NotifyResend     = 7
)

// UniqueResend is OR-ed into the unique of a request the kernel re-sends
// after FUSE_NOTIFY_RESEND; the reply must carry it unchanged.
const UniqueResend = 1 << 63

// uniqueInterrupt marks the unique of an INTERRUPT request (and of its
// reply): the interrupted request's unique with bit 0 set.
const uniqueInterrupt = 1

// Sizes of the wire structures.
const (
	InHeaderSize     = 40
	OutHeaderSize    = 16
	initInMinSize    = 16 // before 7.36 (no flags2)
	initInSize       = 64
	initOutSize      = 64
	getattrInSize    = 16
	setattrInSize    = 88
	openInSize       = 8
	readInSize       = 40
	writeInSize      = 40
	releaseInSize    = 24
	flushInSize      = 24
	fsyncInSize      = 16
	fallocateInSize  = 32
	interruptInSize  = 8
	forgetInSize     = 8
	batchForgetSize  = 8
	forgetOneSize    = 16
	attrSize         = 88
	attrOutSize      = 16 + attrSize
	entryOutSize     = 40 + attrSize
	openOutSize      = 16
	writeOutSize     = 8
	statfsOutSize    = 80
	direntHeaderSize = 24
	invalInodeSize   = 24

	// WriteHeaderSize is what precedes WRITE data in a request: the data
	// of a request read at page offset -WriteHeaderSize is page aligned.
	WriteHeaderSize = InHeaderSize + writeInSize
	// MinReadBuffer is the kernel's floor for a /dev/fuse read buffer.
	MinReadBuffer = 8192
	// MaxMaxWrite is the largest request the kernel sends (256 pages).
	MaxMaxWrite = 256 * pageSize
	pageSize    = 4096
)

var le = binary.LittleEndian

// InHeader is struct fuse_in_header.
type InHeader struct {
	Len         uint32
	Opcode      uint32
	Unique      uint64
	NodeID      uint64
	UID, GID    uint32
	PID         uint32
	TotalExtLen uint16 // extensions after the arguments, in 8-byte units
}

func (h *InHeader) decode(b []byte) {
	h.Len = le.Uint32(b[0:])
	h.Opcode = le.Uint32(b[4:])
	h.Unique = le.Uint64(b[8:])
	h.NodeID = le.Uint64(b[16:])
	h.UID = le.Uint32(b[24:])
	h.GID = le.Uint32(b[28:])
	h.PID = le.Uint32(b[32:])
	h.TotalExtLen = le.Uint16(b[36:])
}

// Encode writes h into b (at least InHeaderSize bytes); tests and fuzz
// seeds build requests with it.
func (h *InHeader) Encode(b []byte) {
	le.PutUint32(b[0:], h.Len)
	le.PutUint32(b[4:], h.Opcode)
	le.PutUint64(b[8:], h.Unique)
	le.PutUint64(b[16:], h.NodeID)
	le.PutUint32(b[24:], h.UID)
	le.PutUint32(b[28:], h.GID)
	le.PutUint32(b[32:], h.PID)
	le.PutUint16(b[36:], h.TotalExtLen)
	le.PutUint16(b[38:], 0)
}

// putOutHeader writes struct fuse_out_header: error is 0 or a negative
// errno for a reply, the notification code for a notification (unique 0).
func putOutHeader(b []byte, length uint32, errOrCode int32, unique uint64) {
	le.PutUint32(b[0:], length)
	le.PutUint32(b[4:], uint32(errOrCode))
	le.PutUint64(b[8:], unique)
}

// Attr is struct fuse_attr (the subset of fields this server sets).
type Attr struct {
	Ino     uint64
	Size    uint64
	Blocks  uint64
	Mode    uint32
	Nlink   uint32
	Blksize uint32
}

func (a *Attr) encode(b []byte) {
	clear(b[:attrSize])
	le.PutUint64(b[0:], a.Ino)
	le.PutUint64(b[8:], a.Size)
	le.PutUint64(b[16:], a.Blocks)
	// atime, mtime, ctime and their nsec stay zero.
	le.PutUint32(b[60:], a.Mode)
	le.PutUint32(b[64:], a.Nlink)
	// uid, gid (0: root), rdev stay zero.
	le.PutUint32(b[80:], a.Blksize)
}

// DecodeAttr reads struct fuse_attr (tests check replies with it).
func DecodeAttr(b []byte) Attr {
	return Attr{
		Ino: le.Uint64(b[0:]), Size: le.Uint64(b[8:]), Blocks: le.Uint64(b[16:]),
		Mode: le.Uint32(b[60:]), Nlink: le.Uint32(b[64:]), Blksize: le.Uint32(b[80:]),
	}
}
