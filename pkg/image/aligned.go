package image

import (
	"sync"
	"unsafe"
)

// O_DIRECT needs the memory address aligned too. pkg/fuse hands write
// payloads over page-aligned; other callers' buffers (tests, the CLI, a
// future transport) may not be, so unaligned ones are bounced through pooled
// aligned memory.

// bouncePools holds aligned buffers by size class (4 KiB << i, up to 16 MiB).
type bouncePools struct {
	pools [13]sync.Pool
}

func isAlignedAddr(p []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

// alignedBuffer returns a slice of n bytes whose address is 4 KiB aligned.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	shift := int(directAlign-uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign) % directAlign
	return b[shift : shift+n : shift+n]
}

func (bp *bouncePools) get(n int) *[]byte {
	class := 0
	for size := directAlign; size < n; size <<= 1 {
		class++
	}
	if class >= len(bp.pools) {
		b := alignedBuffer(n)
		return &b
	}
	if v := bp.pools[class].Get(); v != nil {
		return v.(*[]byte)
	}
	b := alignedBuffer(directAlign << class)
	return &b
}

func (bp *bouncePools) put(b *[]byte) {
	class := 0
	for size := directAlign; size < cap(*b); size <<= 1 {
		class++
	}
	if class < len(bp.pools) && cap(*b) == directAlign<<class {
		bp.pools[class].Put(b)
	}
}

func (bounce *bouncePools) directIO(p []byte, off int64, op func([]byte, int64) (int, error), isRead bool) (int, error) {
	if isAlignedAddr(p) {
		return op(p, off)
	}
	bp := bounce.get(len(p))
	defer bounce.put(bp)
	buf := (*bp)[:len(p)]
	if !isRead {
		copy(buf, p)
	}
	n, err := op(buf, off)
	if isRead {
		copy(p, buf[:n])
	}
	return n, err
}
