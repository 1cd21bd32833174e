// Package image implements ploop images: the ploop v2 delta format (Parallels
// "WithouFreSpacExt", the format QEMU's parallels driver reads), delta chains,
// and ploop image directories described by DiskDescriptor.xml.
//
// A delta file is a 64-byte little-endian header, a block allocation table
// (BAT) of uint32 entries right after it, and data clusters from
// FirstBlockOffset on. BAT entry i maps virtual cluster i to a cluster of the
// file (v2: in cluster units; v1: in sectors); 0 means "not in this delta".
package image

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes and magic values of the on-disk format.
const (
	SectorSize         = 512
	HeaderSize         = 64
	DefaultClusterSize = 1 << 20
	MinClusterSize     = 64 << 10
	MaxClusterSize     = 16 << 20
	// MaxSize bounds the virtual size so BAT offsets fit uint32 cluster numbers
	// and sector counts fit the header; 64 TiB is far beyond what a volume needs.
	MaxSize = 64 << 40

	magicV1     = "WithoutFreeSpace"
	magicV2     = "WithouFreSpacExt"
	headerType  = 2          // PRL_IMAGE_COMPRESSED: "expanded" (sparse) image
	inUseMark   = 0x746F6E59 // SIGNATURE_DISK_IN_USE
	defaultHead = 16
)

// ErrCorrupt is wrapped by every error that reports a malformed image.
var ErrCorrupt = errors.New("corrupt ploop image")

// Header is the decoded 64-byte delta header.
type Header struct {
	Version     int    // 1 ("WithoutFreeSpace", sector-unit BAT) or 2
	Heads       uint32 // geometry, informational
	Cylinders   uint32
	Tracks      uint32 // sectors per cluster
	BATEntries  uint32
	Sectors     uint64 // virtual size in 512-byte sectors
	InUse       bool   // set while open for writing; still set after a crash
	DataOffset  uint32 // first data cluster, in sectors
	Flags       uint32
	ExtOffset   uint64 // format extension offset (unused by us, preserved)
	rawInUseVal uint32
}

// ClusterSize returns the cluster size in bytes.
func (h Header) ClusterSize() int64 { return int64(h.Tracks) * SectorSize }

// Size returns the virtual size in bytes.
func (h Header) Size() int64 { return int64(h.Sectors) * SectorSize }

// DataStart returns the byte offset of the first data cluster.
func (h Header) DataStart() int64 { return int64(h.DataOffset) * SectorSize }

// BATBytes returns the byte length of header plus BAT.
func (h Header) BATBytes() int64 { return HeaderSize + 4*int64(h.BATEntries) }

// clusterOffset turns a BAT entry into a byte offset in the file.
func (h Header) clusterOffset(entry uint32) int64 {
	if h.Version == 1 {
		return int64(entry) * SectorSize
	}
	return int64(entry) * h.ClusterSize()
}

// batEntryFor turns a cluster-aligned byte offset into a BAT entry (v2 only).
func (h Header) batEntryFor(off int64) uint32 { return uint32(off / h.ClusterSize()) }

// NewHeader returns a v2 header for an image of size bytes. The BAT area is
// rounded up to whole clusters so data clusters are cluster-aligned, as ploop
// and qemu-img lay them out.
func NewHeader(size, clusterSize int64) (Header, error) {
	if err := validateGeometry(size, clusterSize); err != nil {
		return Header{}, err
	}
	tracks := uint32(clusterSize / SectorSize)
	entries := uint32((size + clusterSize - 1) / clusterSize)
	h := Header{
		Version:    2,
		Heads:      defaultHead,
		Tracks:     tracks,
		BATEntries: entries,
		Sectors:    uint64(size / SectorSize),
	}
	h.Cylinders = uint32(h.Sectors / uint64(defaultHead*tracks))
	batClusters := (h.BATBytes() + clusterSize - 1) / clusterSize
	h.DataOffset = uint32(batClusters * clusterSize / SectorSize)
	return h, nil
}

func validateGeometry(size, clusterSize int64) error {
	if clusterSize < MinClusterSize || clusterSize > MaxClusterSize || clusterSize&(clusterSize-1) != 0 {
		return fmt.Errorf("cluster size %d: must be a power of two from 64 KiB to 16 MiB", clusterSize)
	}
	if size <= 0 || size%SectorSize != 0 || size > MaxSize {
		return fmt.Errorf("size %d: must be a positive multiple of 512 bytes up to 64 TiB", size)
	}
	return nil
}

// Encode returns the 64-byte on-disk form.
func (h Header) Encode() []byte {
	b := make([]byte, HeaderSize)
	if h.Version == 1 {
		copy(b, magicV1)
	} else {
		copy(b, magicV2)
	}
	le := binary.LittleEndian
	le.PutUint32(b[16:], headerType)
	le.PutUint32(b[20:], h.Heads)
	le.PutUint32(b[24:], h.Cylinders)
	le.PutUint32(b[28:], h.Tracks)
	le.PutUint32(b[32:], h.BATEntries)
	if h.Version == 1 {
		le.PutUint32(b[36:], uint32(h.Sectors))
	} else {
		le.PutUint64(b[36:], h.Sectors)
	}
	if h.InUse {
		le.PutUint32(b[44:], inUseMark)
	}
	le.PutUint32(b[48:], h.DataOffset)
	le.PutUint32(b[52:], h.Flags)
	le.PutUint64(b[56:], h.ExtOffset)
	return b
}

// DecodeHeader parses and validates a header. fileSize bounds the BAT so a
// corrupt header can never cause a huge allocation or a read outside the file.
func DecodeHeader(b []byte, fileSize int64) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header is %d bytes, want %d", ErrCorrupt, len(b), HeaderSize)
	}
	var h Header
	switch string(b[:16]) {
	case magicV2:
		h.Version = 2
	case magicV1:
		h.Version = 1
	default:
		return Header{}, fmt.Errorf("%w: bad magic %q", ErrCorrupt, b[:16])
	}
	le := binary.LittleEndian
	if t := le.Uint32(b[16:]); t != headerType {
		return Header{}, fmt.Errorf("%w: unsupported image type %d (want %d)", ErrCorrupt, t, headerType)
	}
	h.Heads = le.Uint32(b[20:])
	h.Cylinders = le.Uint32(b[24:])
	h.Tracks = le.Uint32(b[28:])
	h.BATEntries = le.Uint32(b[32:])
	h.Sectors = le.Uint64(b[36:])
	if h.Version == 1 {
		h.Sectors &= 0xffffffff
	}
	h.rawInUseVal = le.Uint32(b[44:])
	h.InUse = h.rawInUseVal == inUseMark
	h.DataOffset = le.Uint32(b[48:])
	h.Flags = le.Uint32(b[52:])
	h.ExtOffset = le.Uint64(b[56:])
	return h, h.validate(fileSize)
}

func (h *Header) validate(fileSize int64) error {
	cs := h.ClusterSize()
	switch {
	case h.Version == 2 && (cs < MinClusterSize || cs > MaxClusterSize || cs&(cs-1) != 0):
		return fmt.Errorf("%w: cluster size %d bytes (tracks %d) out of range 64 KiB..16 MiB", ErrCorrupt, cs, h.Tracks)
	case h.Version == 1 && (h.Tracks == 0 || cs > MaxClusterSize):
		return fmt.Errorf("%w: cluster size %d bytes (tracks %d) out of range", ErrCorrupt, cs, h.Tracks)
	case h.Sectors == 0 || h.Size() > MaxSize || h.Sectors > MaxSize/SectorSize:
		return fmt.Errorf("%w: virtual size %d sectors out of range", ErrCorrupt, h.Sectors)
	case uint64(h.BATEntries)*uint64(h.Tracks) < h.Sectors:
		return fmt.Errorf("%w: BAT of %d entries does not cover %d sectors", ErrCorrupt, h.BATEntries, h.Sectors)
	case fileSize >= 0 && h.BATBytes() > fileSize:
		return fmt.Errorf("%w: BAT of %d entries ends past the end of the %d-byte file", ErrCorrupt, h.BATEntries, fileSize)
	}
	if h.DataOffset == 0 { // old images leave it 0: data starts after the BAT
		h.DataOffset = uint32((h.BATBytes() + SectorSize - 1) / SectorSize)
	}
	if h.DataStart() < h.BATBytes() {
		return fmt.Errorf("%w: data offset %d overlaps the BAT (%d bytes)", ErrCorrupt, h.DataStart(), h.BATBytes())
	}
	return nil
}
