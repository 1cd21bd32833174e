package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The ext2/3/4 superblock: 1024 bytes at byte 1024 of the device, little-endian
// (include/linux/fs/ext4/ext4.h, struct ext4_super_block).
const (
	extSuperblockOffset = 1024
	extSuperblockSize   = 1024
	extMagic            = 0xEF53
	extIncompat64Bit    = 0x80
)

// extFilesystemBytes decodes the size of an ext2/3/4 filesystem from its
// superblock; ok is false when sb is not one.
func extFilesystemBytes(sb []byte) (size int64, ok bool) {
	if len(sb) < extSuperblockSize || binary.LittleEndian.Uint16(sb[0x38:]) != extMagic {
		return 0, false
	}
	logBlock := binary.LittleEndian.Uint32(sb[0x18:])
	if logBlock > 6 { // 1 KiB << 6 = 64 KiB, the largest ext4 block
		return 0, false
	}
	blocks := uint64(binary.LittleEndian.Uint32(sb[0x04:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&extIncompat64Bit != 0 {
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	bs := uint64(1024) << logBlock
	if blocks == 0 || blocks > (1<<63-1)/bs {
		return 0, false
	}
	return int64(blocks * bs), true
}

// extSmallerThanDevice reports whether devicePath holds an ext filesystem
// smaller than the device by at least one block (what a restore or clone into a
// larger volume, or an expansion while unstaged, leaves).
func extSmallerThanDevice(devicePath string) (bool, error) {
	f, err := os.Open(devicePath)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", devicePath, err)
	}
	defer f.Close()
	sb := make([]byte, extSuperblockSize)
	if _, err := f.ReadAt(sb, extSuperblockOffset); err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read superblock of %s: %w", devicePath, err)
	}
	fsBytes, ok := extFilesystemBytes(sb)
	if !ok {
		return false, nil
	}
	devBytes, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return false, fmt.Errorf("size of %s: %w", devicePath, err)
	}
	block := int64(1024) << binary.LittleEndian.Uint32(sb[0x18:])
	return fsBytes+block <= int64(devBytes), nil
}
