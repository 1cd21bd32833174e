package fuse

import (
	"encoding/binary"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// request builds a wire request: header, then args.
func request(op uint32, unique, node uint64, args ...[]byte) []byte {
	n := InHeaderSize
	for _, a := range args {
		n += len(a)
	}
	b := make([]byte, InHeaderSize, n)
	h := InHeader{Len: uint32(n), Opcode: op, Unique: unique, NodeID: node, UID: 0, GID: 0, PID: 42}
	h.Encode(b)
	for _, a := range args {
		b = append(b, a...)
	}
	return b
}

// fields encodes little-endian values: uint64, uint32, uint16 as given.
func fields(vs ...any) []byte {
	var b []byte
	for _, v := range vs {
		switch v := v.(type) {
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case []byte:
			b = append(b, v...)
		default:
			panic("fields: unsupported type")
		}
	}
	return b
}

func initArgs(minor uint32, flags uint64) []byte {
	a := fields(uint32(7), minor, uint32(128<<10), uint32(flags), uint32(flags>>32))
	return append(a, make([]byte, initInSize-len(a))...)
}

func readArgs(off uint64, size uint32) []byte {
	return fields(uint64(0), off, size, uint32(0), uint64(0), uint32(0), uint32(0))
}

func writeArgs(off uint64, data []byte) []byte {
	return fields(uint64(0), off, uint32(len(data)), uint32(0), uint64(0), uint32(0), uint32(0), data)
}

func fallocateArgs(off, length uint64, mode uint32) []byte {
	return fields(uint64(0), off, length, mode, uint32(0))
}

// memFile is a File in memory that records calls.
type memFile struct {
	mu      sync.Mutex
	data    []byte
	flushes int
	allocs  [][3]int64
}

func newMemFile(size int) *memFile { return &memFile{data: make([]byte, size)} }

func (m *memFile) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.data))
}

func (m *memFile) ReadAt(p []byte, off int64) (int, unix.Errno) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.data)) {
		return 0, 0
	}
	return copy(p, m.data[off:]), 0
}

func (m *memFile) WriteAt(p []byte, off int64) (int, unix.Errno) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.data)) {
		return 0, unix.ENOSPC
	}
	return copy(m.data[off:], p), 0
}

func (m *memFile) Flush() unix.Errno {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return 0
}

// flushCount is flushes, for a test that reads it while a server runs.
func (m *memFile) flushCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.flushes
}

func (m *memFile) Fallocate(off, length int64, mode uint32) unix.Errno {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.allocs = append(m.allocs, [3]int64{off, length, int64(mode)})
	return 0
}

func (m *memFile) grow(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data = append(m.data, make([]byte, n)...)
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

// alignedBuffer returns n bytes at a page-aligned address. Go's heap does
// not move objects, so the alignment holds for the buffer's life.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+pageSize)
	shift := (pageSize - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%pageSize)) % pageSize
	return b[shift : shift+n : shift+n]
}
