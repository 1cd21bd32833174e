package fuse

import (
	"errors"
	"testing"
)

// FuzzParseRequest feeds arbitrary bytes to the parser and, through the
// Server's handler, to the reply encoder, as the classic transport would:
// nothing may panic, and every reply must be one the kernel accepts
// (error replies are a bare header, lengths add up, READ data is no
// longer than asked for).
func FuzzParseRequest(f *testing.F) {
	data := make([]byte, 4096)
	for _, seed := range [][]byte{
		request(OpInit, 2, 0, initArgs(45, kernelOffer)),
		request(OpLookup, 4, RootID, []byte("disk\x00")),
		request(OpGetattr, 6, FileID, make([]byte, getattrInSize)),
		request(OpSetattr, 8, FileID, fields(uint32(fattrSize), uint32(0), uint64(0), uint64(4096), make([]byte, 64))),
		request(OpOpen, 10, FileID, make([]byte, openInSize)),
		request(OpRead, 12, FileID, readArgs(0, 4096)),
		request(OpWrite, 14, FileID, writeArgs(0, data)),
		request(OpFlush, 16, FileID, make([]byte, flushInSize)),
		request(OpFsync, 18, FileID, make([]byte, fsyncInSize)),
		request(OpFallocate, 20, FileID, fallocateArgs(0, 4096, 3)),
		request(OpRelease, 22, FileID, make([]byte, releaseInSize)),
		request(OpStatfs, 24, RootID),
		request(OpOpendir, 26, RootID, make([]byte, openInSize)),
		request(OpReaddir, 28, RootID, readArgs(0, 4096)),
		request(OpReleasedir, 30, RootID, make([]byte, releaseInSize)),
		request(OpForget, 32, FileID, fields(uint64(1))),
		request(OpBatchForget, 34, 0, fields(uint32(1), uint32(0), uint64(2), uint64(1))),
		request(OpInterrupt, 37, 0, fields(uint64(36))),
		request(OpDestroy, 38, 0),
		request(OpStatx, 40, FileID, make([]byte, 24)),
		request(OpGetxattr, 42, FileID, fields(uint32(0), uint32(0)), []byte("user.x\x00")),
	} {
		f.Add(seed)
	}
	x := newExchange(newMemFile(64 << 10))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var req Request
		err := ParseRequest(msg, &req)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v does not match ErrMalformed", err)
		}
		if err == nil && int(req.Header.Len) != len(msg) {
			t.Fatalf("accepted a request of %d bytes whose header says %d", len(msg), req.Header.Len)
		}
		r := x.do(msg)
		if !r.sent {
			return
		}
		if r.errno > 0 || r.errno <= -512 {
			t.Fatalf("errno field %d", r.errno)
		}
		if r.errno != 0 && (len(r.arg) != 0 || len(r.data) != 0) {
			t.Fatalf("error reply with %d+%d argument bytes", len(r.arg), len(r.data))
		}
		if int(r.len) != OutHeaderSize+len(r.arg)+len(r.data) {
			t.Fatalf("reply length %d != %d", r.len, OutHeaderSize+len(r.arg)+len(r.data))
		}
		if err == nil && (req.Header.Opcode == OpRead || req.Header.Opcode == OpReaddir) && len(r.data) > int(req.Read.Size) {
			t.Fatalf("%d bytes answered to a read of %d", len(r.data), req.Read.Size)
		}
	})
}
