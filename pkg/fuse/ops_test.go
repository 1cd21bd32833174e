package fuse

import (
	"bytes"
	"log/slog"
	"testing"

	"golang.org/x/sys/unix"
)

// exchange runs one wire request through the Server's handler as the
// classic transport does (answer) and returns the reply's header, argument
// and data.
type exchange struct {
	srv *Server
	buf []byte
	req Request // reused like a transport reader's
	rep Reply
}

func newExchange(f File) *exchange {
	st, _ := Negotiate(InitIn{Major: 7, Minor: 45, Flags: kernelOffer}, InitOptions{})
	return &exchange{
		srv: &Server{cfg: Config{FileName: "disk", File: f}, st: st, log: slog.New(slog.DiscardHandler)},
		buf: alignedBuffer(st.MaxPayload()),
	}
}

type wireReply struct {
	sent      bool
	len       uint32
	errno     int32
	unique    uint64
	arg, data []byte
}

func (x *exchange) do(msg []byte) wireReply {
	x.rep.Buf = x.buf
	head, data, ok := answer(x.srv, msg, &x.req, &x.rep)
	if !ok {
		return wireReply{}
	}
	return wireReply{sent: true, len: le.Uint32(head), errno: int32(le.Uint32(head[4:])),
		unique: le.Uint64(head[8:]), arg: head[OutHeaderSize:], data: data}
}

func (w wireReply) check(t *testing.T, errno unix.Errno, argLen int) {
	t.Helper()
	if !w.sent {
		t.Fatal("no reply")
	}
	if w.errno != -int32(errno) || len(w.arg) != argLen || int(w.len) != OutHeaderSize+len(w.arg)+len(w.data) {
		t.Fatalf("reply errno %d, arg %d bytes, len %d (data %d); want errno -%d, arg %d",
			w.errno, len(w.arg), w.len, len(w.data), errno, argLen)
	}
}

func TestDispatchNamespace(t *testing.T) {
	x := newExchange(newMemFile(1 << 20))

	r := x.do(request(OpLookup, 2, RootID, []byte("disk\x00")))
	r.check(t, 0, entryOutSize)
	if le.Uint64(r.arg) != FileID {
		t.Errorf("lookup node %d", le.Uint64(r.arg))
	}
	if a := DecodeAttr(r.arg[40:]); a.Size != 1<<20 || a.Mode != unix.S_IFREG|0o600 {
		t.Errorf("lookup attr %+v", a)
	}
	x.do(request(OpLookup, 4, RootID, []byte("other\x00"))).check(t, unix.ENOENT, 0)
	x.do(request(OpLookup, 6, FileID, []byte("disk\x00"))).check(t, unix.ENOENT, 0)

	r = x.do(request(OpGetattr, 8, RootID, make([]byte, getattrInSize)))
	r.check(t, 0, attrOutSize)
	if a := DecodeAttr(r.arg[16:]); a.Mode != unix.S_IFDIR|0o700 {
		t.Errorf("root attr %+v", a)
	}
	x.do(request(OpGetattr, 10, 99, make([]byte, getattrInSize))).check(t, unix.ENOENT, 0)

	r = x.do(request(OpOpen, 12, FileID, make([]byte, openInSize)))
	r.check(t, 0, openOutSize)
	if fl := le.Uint32(r.arg[8:]); fl != FopenDirectIO|FopenParallelDirectWrites {
		t.Errorf("open flags %#x; want DIRECT_IO|PARALLEL_DIRECT_WRITES", fl)
	}
	x.do(request(OpOpen, 14, RootID, make([]byte, openInSize))).check(t, unix.EISDIR, 0)
	x.do(request(OpOpendir, 16, RootID, make([]byte, openInSize))).check(t, 0, openOutSize)

	r = x.do(request(OpReaddir, 18, RootID, readArgs(0, 4096)))
	r.check(t, 0, 0)
	if !bytes.Contains(r.data, []byte("disk")) || len(r.data) != 3*32 {
		t.Errorf("readdir %d bytes: %q", len(r.data), r.data)
	}
	r = x.do(request(OpReaddir, 20, RootID, readArgs(2, 4096)))
	if len(r.data) != 32 || le.Uint64(r.data) != FileID {
		t.Errorf("readdir from 2: % x", r.data)
	}
	r = x.do(request(OpReaddir, 22, RootID, readArgs(0, 40)))
	if len(r.data) != 32 {
		t.Errorf("readdir into 40 bytes: %d bytes", len(r.data))
	}

	r = x.do(request(OpStatfs, 24, RootID))
	r.check(t, 0, statfsOutSize)
	if le.Uint64(r.arg) != 256 || le.Uint32(r.arg[40:]) != 4096 {
		t.Errorf("statfs % x", r.arg)
	}
}

func TestDispatchData(t *testing.T) {
	f := newMemFile(1 << 20)
	x := newExchange(f)
	data := bytes.Repeat([]byte("ab"), 2048)

	r := x.do(request(OpWrite, 2, FileID, writeArgs(8192, data)))
	r.check(t, 0, writeOutSize)
	if le.Uint32(r.arg) != 4096 {
		t.Errorf("wrote %d", le.Uint32(r.arg))
	}
	r = x.do(request(OpRead, 4, FileID, readArgs(8192, 4096)))
	r.check(t, 0, 0)
	if !bytes.Equal(r.data, data) {
		t.Error("read back differs")
	}
	if uintptr(unsafePointer(r.data))%pageSize != 0 {
		t.Error("READ reply data not page aligned")
	}
	// Too large for the buffer, offsets that overflow int64.
	x.do(request(OpRead, 6, FileID, readArgs(0, 2<<20))).check(t, unix.EINVAL, 0)
	x.do(request(OpRead, 8, FileID, readArgs(1<<63, 4096))).check(t, unix.EINVAL, 0)
	x.do(request(OpWrite, 10, FileID, writeArgs(1<<63-2, data))).check(t, unix.EINVAL, 0)
	x.do(request(OpRead, 12, RootID, readArgs(0, 4096))).check(t, unix.EISDIR, 0)

	x.do(request(OpFlush, 14, FileID, make([]byte, flushInSize))).check(t, 0, 0)
	x.do(request(OpFsync, 16, FileID, make([]byte, fsyncInSize))).check(t, 0, 0)
	if f.flushes != 2 {
		t.Errorf("%d flushes; want 2", f.flushes)
	}
	x.do(request(OpFallocate, 18, FileID, fallocateArgs(4096, 8192, 3))).check(t, 0, 0)
	x.do(request(OpFallocate, 20, FileID, fallocateArgs(4096, 0, 3))).check(t, unix.EINVAL, 0)
	if len(f.allocs) != 1 || f.allocs[0] != [3]int64{4096, 8192, 3} {
		t.Errorf("fallocate calls %v", f.allocs)
	}

	// The size changes only from the server side.
	setSize := func(unique, size uint64) []byte {
		return request(OpSetattr, unique, FileID, fields(uint32(fattrSize), uint32(0), uint64(0), size, make([]byte, 64)))
	}
	x.do(setSize(22, 2<<20)).check(t, unix.EINVAL, 0)
	x.do(setSize(24, 1<<20)).check(t, 0, attrOutSize)
}

func TestDispatchProtocol(t *testing.T) {
	x := newExchange(newMemFile(4096))
	for _, op := range []uint32{OpForget, OpBatchForget} {
		args := fields(uint64(1))
		if op == OpBatchForget {
			args = fields(uint32(0), uint32(0))
		}
		if r := x.do(request(op, 2, FileID, args)); r.sent {
			t.Errorf("opcode %d got a reply", op)
		}
	}
	// INTERRUPT: ENOSYS to the interrupt's own unique (bit 0 set).
	r := x.do(request(OpInterrupt, 5, 0, fields(uint64(4))))
	r.check(t, unix.ENOSYS, 0)
	if r.unique != 5 {
		t.Errorf("interrupt reply unique %d", r.unique)
	}
	for _, op := range []uint32{OpStatx, OpGetxattr, OpListxattr, 40 /* POLL */, 999} {
		x.do(request(op, 6, FileID, make([]byte, 24))).check(t, unix.ENOSYS, 0)
	}
	x.do(request(OpInit, 8, 0, initArgs(45, kernelOffer))).check(t, unix.EPROTO, 0)
	x.do(request(OpRelease, 10, FileID, make([]byte, releaseInSize))).check(t, 0, 0)
	x.do(request(OpDestroy, 12, 0)).check(t, 0, 0)

	// A re-sent request is answered with its unique unchanged.
	r = x.do(request(OpGetattr, UniqueResend|14, FileID, make([]byte, getattrInSize)))
	if r.unique != UniqueResend|14 {
		t.Errorf("resent unique answered as %#x", r.unique)
	}
	// Malformed: EINVAL, or EIO without a whole header; nothing for FORGET.
	x.do(request(OpRead, 16, FileID, make([]byte, 10))).check(t, unix.EINVAL, 0)
	x.do(request(OpRead, 18, FileID)[:20]).check(t, unix.EIO, 0)
	if r := x.do(request(OpForget, 20, FileID)); r.sent {
		t.Error("malformed FORGET got a reply")
	}
}

func TestAppendDirent(t *testing.T) {
	buf := make([]byte, 0, 64)
	out, ok := AppendDirent(buf, 64, Dirent{Ino: 2, Off: 1, Type: unix.DT_REG, Name: "abcdefghi"})
	if !ok || len(out) != 40 || le.Uint32(out[16:]) != 9 || string(out[24:33]) != "abcdefghi" {
		t.Fatalf("dirent %v % x", ok, out)
	}
	if _, ok := AppendDirent(out, 64, Dirent{Name: "x"}); ok {
		t.Error("a second entry fitted in 64 bytes")
	}
}

// The hot path (parse, handle, encode the reply) allocates nothing.
func TestNoAllocationPerRequest(t *testing.T) {
	x := newExchange(newMemFile(1 << 20))
	read := request(OpRead, 2, FileID, readArgs(4096, 65536))
	write := request(OpWrite, 4, FileID, writeArgs(8192, make([]byte, 65536)))
	for name, msg := range map[string][]byte{"read": read, "write": write} {
		if n := testing.AllocsPerRun(200, func() { x.do(msg) }); n != 0 {
			t.Errorf("%s: %v allocations per request", name, n)
		}
	}
}
