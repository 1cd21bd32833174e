package fuse

import (
	"time"

	"golang.org/x/sys/unix"
)

// maxArgSize is the largest fixed-size reply argument (fuse_entry_out).
const maxArgSize = entryOutSize

// Reply is the answer to one request, built by the handler and sent by the
// transport that owns it. A transport resets it before each request.
type Reply struct {
	// Buf is the transport's room for reply data (READ, READDIR): page
	// aligned, at least as long as the connection's largest READ. Reading
	// straight into it saves a copy, and O_DIRECT backing I/O needs no
	// bounce buffer.
	Buf []byte

	unique uint64
	errno  unix.Errno
	none   bool
	argLen int
	data   []byte
	head   [OutHeaderSize + maxArgSize]byte
}

// reset prepares r for the request with the given unique.
func (r *Reply) reset(unique uint64) {
	r.unique, r.errno, r.none, r.argLen, r.data = unique, 0, false, 0, nil
}

// Fail answers with an errno (an error reply carries no arguments).
func (r *Reply) Fail(e unix.Errno) {
	r.errno, r.argLen, r.data = e, 0, nil
}

// NoReply marks a request the kernel expects no answer to (FORGET).
func (r *Reply) NoReply() { r.none = true }

// Errno is the errno r answers with (0 for success).
func (r *Reply) Errno() unix.Errno { return r.errno }

// arg returns room for a fixed-size reply argument of n bytes.
func (r *Reply) arg(n int) []byte {
	r.argLen = n
	return r.head[OutHeaderSize : OutHeaderSize+n]
}

// SetData answers with p as the variable-length argument (READ data);
// p should be a prefix of Buf.
func (r *Reply) SetData(p []byte) { r.data = p }

// Data is the variable-length part set by SetData.
func (r *Reply) Data() []byte { return r.data }

// Arg is the fixed-size argument of a successful reply.
func (r *Reply) Arg() []byte { return r.head[OutHeaderSize : OutHeaderSize+r.argLen] }

// Wire returns the reply as the transport sends it: the out header with
// the fixed argument, then the data (empty for most replies). ok is false
// when nothing is to be sent.
func (r *Reply) Wire() (head, data []byte, ok bool) {
	if r.none {
		return nil, nil, false
	}
	if r.errno != 0 {
		putOutHeader(r.head[:], OutHeaderSize, -int32(r.errno), r.unique)
		return r.head[:OutHeaderSize], nil, true
	}
	n := OutHeaderSize + r.argLen
	putOutHeader(r.head[:], uint32(n+len(r.data)), 0, r.unique)
	return r.head[:n], r.data, true
}

// splitDuration converts a cache timeout into fuse's seconds + nanoseconds.
func splitDuration(d time.Duration) (uint64, uint32) {
	return uint64(d / time.Second), uint32(d % time.Second)
}

// EntryOut fills a fuse_entry_out reply.
func (r *Reply) EntryOut(node, generation uint64, ttl time.Duration, a *Attr) {
	b := r.arg(entryOutSize)
	sec, nsec := splitDuration(ttl)
	le.PutUint64(b[0:], node)
	le.PutUint64(b[8:], generation)
	le.PutUint64(b[16:], sec) // entry_valid
	le.PutUint64(b[24:], sec) // attr_valid
	le.PutUint32(b[32:], nsec)
	le.PutUint32(b[36:], nsec)
	a.encode(b[40:])
}

// AttrOut fills a fuse_attr_out reply.
func (r *Reply) AttrOut(ttl time.Duration, a *Attr) {
	b := r.arg(attrOutSize)
	sec, nsec := splitDuration(ttl)
	le.PutUint64(b[0:], sec)
	le.PutUint32(b[8:], nsec)
	le.PutUint32(b[12:], 0)
	a.encode(b[16:])
}

// OpenOut fills a fuse_open_out reply.
func (r *Reply) OpenOut(fh uint64, openFlags uint32) {
	b := r.arg(openOutSize)
	le.PutUint64(b[0:], fh)
	le.PutUint32(b[8:], openFlags)
	le.PutUint32(b[12:], 0) // backing_id: no passthrough
}

// WriteOut fills a fuse_write_out reply.
func (r *Reply) WriteOut(n uint32) {
	b := r.arg(writeOutSize)
	le.PutUint32(b[0:], n)
	le.PutUint32(b[4:], 0)
}

// Statfs is struct fuse_kstatfs (the fields this server sets).
type Statfs struct {
	Blocks, Bfree, Bavail, Files, Ffree uint64
	Bsize, NameLen, Frsize              uint32
}

// StatfsOut fills a fuse_statfs_out reply.
func (r *Reply) StatfsOut(s *Statfs) {
	b := r.arg(statfsOutSize)
	clear(b)
	le.PutUint64(b[0:], s.Blocks)
	le.PutUint64(b[8:], s.Bfree)
	le.PutUint64(b[16:], s.Bavail)
	le.PutUint64(b[24:], s.Files)
	le.PutUint64(b[32:], s.Ffree)
	le.PutUint32(b[40:], s.Bsize)
	le.PutUint32(b[44:], s.NameLen)
	le.PutUint32(b[48:], s.Frsize)
}

// Dirent is one READDIR entry.
type Dirent struct {
	Ino  uint64
	Off  uint64 // offset of the next entry
	Type uint32 // DT_* (unix.DT_DIR, unix.DT_REG)
	Name string
}

// direntSize is the padded size of a fuse_dirent with an n-byte name.
func direntSize(n int) int { return (direntHeaderSize + n + 7) &^ 7 }

// AppendDirent encodes d at the end of p if it fits in max bytes and
// reports whether it did.
func AppendDirent(p []byte, max int, d Dirent) ([]byte, bool) {
	n := direntSize(len(d.Name))
	if len(p)+n > max || len(p)+n > cap(p) {
		return p, false
	}
	b := p[len(p) : len(p)+n]
	clear(b)
	le.PutUint64(b[0:], d.Ino)
	le.PutUint64(b[8:], d.Off)
	le.PutUint32(b[16:], uint32(len(d.Name)))
	le.PutUint32(b[20:], d.Type)
	copy(b[direntHeaderSize:], d.Name)
	return p[:len(p)+n], true
}
