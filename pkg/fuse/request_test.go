package fuse

import (
	"bytes"
	"errors"
	"testing"
)

func TestParseRequestOps(t *testing.T) {
	data := []byte("0123456789abcdef")
	cases := []struct {
		name  string
		msg   []byte
		check func(t *testing.T, r *Request)
	}{
		{"init", request(OpInit, 2, 0, initArgs(45, FlagAsyncDIO|FlagInitExt|FlagRequestTimeout)), func(t *testing.T, r *Request) {
			if r.Init.Major != 7 || r.Init.Minor != 45 || r.Init.Flags != FlagAsyncDIO|FlagInitExt|FlagRequestTimeout {
				t.Errorf("init = %+v", r.Init)
			}
		}},
		{"init without flags2", request(OpInit, 2, 0, fields(uint32(7), uint32(35), uint32(0), uint32(FlagAsyncDIO))), func(t *testing.T, r *Request) {
			if r.Init.Minor != 35 || r.Init.Flags != FlagAsyncDIO {
				t.Errorf("init = %+v", r.Init)
			}
		}},
		{"lookup", request(OpLookup, 4, RootID, []byte("disk\x00")), func(t *testing.T, r *Request) {
			if string(r.Name) != "disk" {
				t.Errorf("name %q", r.Name)
			}
		}},
		{"getattr", request(OpGetattr, 6, FileID, fields(uint32(1), uint32(0), uint64(9))), func(t *testing.T, r *Request) {
			if r.Getattr != (GetattrIn{Flags: 1, Fh: 9}) {
				t.Errorf("getattr %+v", r.Getattr)
			}
		}},
		{"setattr", request(OpSetattr, 8, FileID, fields(uint32(fattrSize), uint32(0), uint64(3), uint64(1<<20), make([]byte, 64))), func(t *testing.T, r *Request) {
			if !r.Setattr.SizeSet() || r.Setattr.Size != 1<<20 || r.Setattr.Fh != 3 {
				t.Errorf("setattr %+v", r.Setattr)
			}
		}},
		{"read", request(OpRead, 10, FileID, readArgs(4096, 8192)), func(t *testing.T, r *Request) {
			if r.Read.Offset != 4096 || r.Read.Size != 8192 {
				t.Errorf("read %+v", r.Read)
			}
		}},
		{"write", request(OpWrite, 12, FileID, writeArgs(1<<30, data)), func(t *testing.T, r *Request) {
			if r.Write.Offset != 1<<30 || !bytes.Equal(r.Data, data) {
				t.Errorf("write %+v %q", r.Write, r.Data)
			}
		}},
		{"fallocate", request(OpFallocate, 14, FileID, fallocateArgs(512, 4096, 3)), func(t *testing.T, r *Request) {
			if r.Fallocate.Offset != 512 || r.Fallocate.Length != 4096 || r.Fallocate.Mode != 3 {
				t.Errorf("fallocate %+v", r.Fallocate)
			}
		}},
		{"release", request(OpRelease, 16, FileID, fields(uint64(5), uint32(2), uint32(1), uint64(0))), func(t *testing.T, r *Request) {
			if r.Release != (ReleaseIn{Fh: 5, Flags: 2, ReleaseFlags: 1}) {
				t.Errorf("release %+v", r.Release)
			}
		}},
		{"fsync", request(OpFsync, 18, FileID, fields(uint64(5), uint32(1), uint32(0))), func(t *testing.T, r *Request) {
			if r.Fsync != (FsyncIn{Fh: 5, Flags: 1}) {
				t.Errorf("fsync %+v", r.Fsync)
			}
		}},
		{"interrupt", request(OpInterrupt, 21, 0, fields(uint64(20))), func(t *testing.T, r *Request) {
			if r.Interrupt != 20 {
				t.Errorf("interrupt of %d", r.Interrupt)
			}
		}},
		{"batch forget", request(OpBatchForget, 22, 0, fields(uint32(2), uint32(0), uint64(2), uint64(1), uint64(2), uint64(1))), func(t *testing.T, r *Request) {
			if r.Forgets != 2 {
				t.Errorf("forgets %d", r.Forgets)
			}
		}},
		{"unknown opcode", request(4000, 24, 1, []byte{1, 2, 3}), func(t *testing.T, r *Request) {
			if r.Header.Opcode != 4000 || r.Header.Unique != 24 {
				t.Errorf("header %+v", r.Header)
			}
		}},
		{"resend bit kept", request(OpStatfs, UniqueResend|26, RootID), func(t *testing.T, r *Request) {
			if r.Header.Unique != UniqueResend|26 {
				t.Errorf("unique %#x", r.Header.Unique)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r Request
			if err := ParseRequest(c.msg, &r); err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			c.check(t, &r)
		})
	}
}

func TestParseRequestExtensionsStripped(t *testing.T) {
	msg := request(OpLookup, 2, RootID, []byte("disk\x00\x00\x00\x00"), make([]byte, 16))
	le.PutUint16(msg[36:], 2) // 16 bytes of extensions at the end
	var r Request
	if err := ParseRequest(msg, &r); err != nil || string(r.Name) != "disk" {
		t.Fatalf("ParseRequest = %v, name %q", err, r.Name)
	}
}

func TestParseRequestMalformed(t *testing.T) {
	withLen := func(b []byte, n uint32) []byte { le.PutUint32(b, n); return b }
	withExt := func(b []byte, n uint16) []byte { le.PutUint16(b[36:], n); return b }
	cases := map[string][]byte{
		"empty":              nil,
		"short header":       request(OpStatfs, 2, 1)[:30],
		"length too long":    withLen(request(OpStatfs, 2, 1), 41),
		"length too short":   withLen(request(OpRead, 2, 1, readArgs(0, 4096)), 40),
		"extensions too big": withExt(request(OpStatfs, 2, 1, make([]byte, 8)), 2),
		"short read args":    request(OpRead, 2, FileID, readArgs(0, 4096)[:39]),
		"write size":         request(OpWrite, 2, FileID, fields(uint64(0), uint64(0), uint32(100), uint32(0), uint64(0), uint64(0), make([]byte, 99))),
		"lookup without nul": request(OpLookup, 2, RootID, []byte("disk")),
		"init ext no flags2": request(OpInit, 2, 0, fields(uint32(7), uint32(45), uint32(0), uint32(FlagInitExt))),
		"batch forget count": request(OpBatchForget, 2, 0, fields(uint32(3), uint32(0), make([]byte, 32))),
		"batch forget huge":  request(OpBatchForget, 2, 0, fields(uint32(1<<31), uint32(0))),
		"setattr short":      request(OpSetattr, 2, FileID, make([]byte, 87)),
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			var r Request
			if err := ParseRequest(msg, &r); !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseRequest = %v; want ErrMalformed", err)
			}
			if len(msg) >= 16 && r.Header.Unique != 2 {
				t.Errorf("unique %d not kept for the error reply", r.Header.Unique)
			}
		})
	}
}
