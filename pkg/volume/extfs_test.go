package volume

import (
	"encoding/binary"
	"testing"
)

func extSuperblock(blocksLo, blocksHi, logBlock, incompat uint32) []byte {
	sb := make([]byte, extSuperblockSize)
	binary.LittleEndian.PutUint32(sb[0x04:], blocksLo)
	binary.LittleEndian.PutUint32(sb[0x18:], logBlock)
	binary.LittleEndian.PutUint16(sb[0x38:], extMagic)
	binary.LittleEndian.PutUint32(sb[0x60:], incompat)
	binary.LittleEndian.PutUint32(sb[0x150:], blocksHi)
	return sb
}

func TestExtFilesystemBytes(t *testing.T) {
	for _, c := range []struct {
		sb   []byte
		want int64
		ok   bool
	}{
		{extSuperblock(65536, 0, 2, 0), 256 << 20, true},                       // 64 Ki blocks of 4 KiB
		{extSuperblock(0, 1, 2, extIncompat64Bit), 16 << 40, true},             // 2^32 blocks of 4 KiB
		{extSuperblock(0, 1, 2, 0), 0, false},                                  // hi ignored without 64bit: 0 blocks
		{extSuperblock(100, 0, 7, 0), 0, false},                                // block size too large
		{extSuperblock(0xffffffff, 0xffffffff, 6, extIncompat64Bit), 0, false}, // overflows
		{make([]byte, extSuperblockSize), 0, false},                            // no magic
		{[]byte{1, 2, 3}, 0, false},
	} {
		got, ok := extFilesystemBytes(c.sb)
		if got != c.want || ok != c.ok {
			t.Errorf("extFilesystemBytes = %d, %v; want %d, %v", got, ok, c.want, c.ok)
		}
	}
}

func FuzzExtFilesystemBytes(f *testing.F) {
	f.Add(extSuperblock(65536, 0, 2, 0))
	f.Add(extSuperblock(0, 1, 2, extIncompat64Bit))
	f.Fuzz(func(t *testing.T, sb []byte) {
		if size, ok := extFilesystemBytes(sb); ok && size <= 0 {
			t.Fatalf("size %d accepted", size)
		}
	})
}
