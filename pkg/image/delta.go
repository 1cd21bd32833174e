package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/csi-ploop/csi-ploop/pkg/durable"
)

// Sentinel errors of the package, checked with errors.Is.
var (
	ErrReadOnly = errors.New("image is read-only")
	ErrInvalid  = errors.New("invalid argument")
	ErrClosed   = errors.New("chain is closed")
	// ErrSyncFailed means a sync of a delta, or a write of its metadata
	// (header, BAT), failed. The page cache may have dropped what was
	// written before, so a chain that saw it is failed for good: every
	// later write, discard, flush, snapshot and grow returns it, until the
	// image is closed, checked and reopened (Chain.Err).
	ErrSyncFailed = errors.New("sync failed: close, check and reopen the image")
)

// Delta is one open delta file.
type Delta struct {
	path     string
	f        File
	h        Header
	writable bool

	allocMu  sync.Mutex // guards next, reserved, free and file growth
	next     int64      // byte offset of the next cluster to allocate
	reserved int64      // the file's space is allocated up to here (>= next)
	free     []int64    // clusters below next no entry uses, holes: reused first
}

// Path returns the file the delta was opened from.
func (d *Delta) Path() string { return d.path }

// Header returns the delta's header.
func (d *Delta) Header() Header { return d.h }

// CreateDelta creates an empty delta of size bytes at path on the real file system.
func CreateDelta(path string, size, clusterSize int64) error {
	h, err := NewHeader(size, clusterSize)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("create delta %s: %w", path, os.ErrExist)
	}
	return createDelta(NewOSFS(false), path, h)
}

// createDelta writes a delta under a temporary name and renames it into place,
// so path either does not exist or is a complete, durable, empty delta.
func createDelta(fsys FS, path string, h Header) error {
	h.InUse = false
	err := durable.WriteFileWith(durableFS{fsys}, path, func(f durable.File) error {
		return writeNewDelta(f.(File), h) // durableFS creates image Files
	})
	if err != nil {
		return fmt.Errorf("create delta: %w", err)
	}
	return nil
}

// writeNewDelta lays out an empty delta; the caller syncs it.
func writeNewDelta(f File, h Header) error {
	// The BAT stays a hole (zeros: every cluster unallocated), so creation is
	// instant at any size.
	if err := f.Truncate(h.DataStart()); err != nil {
		return err
	}
	_, err := f.WriteAt(h.Encode(), 0)
	return err
}

// ReadHeader reads and validates the header of the delta file at path.
func ReadHeader(path string) (Header, error) {
	d, err := openDelta(NewOSFS(false), path, false)
	if err != nil {
		return Header{}, err
	}
	h := d.h
	return h, d.close(true)
}

// openDelta opens and validates a delta. A writable delta gets the in-use
// mark, made durable before any data is written.
func openDelta(fsys FS, path string, writable bool) (*Delta, error) {
	f, err := fsys.Open(path, writable)
	if err != nil {
		return nil, fmt.Errorf("open delta: %w", err)
	}
	d, err := newDelta(f, path, writable)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("delta %s: %w", path, err)
	}
	return d, nil
}

func newDelta(f File, path string, writable bool) (*Delta, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, HeaderSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: file of %d bytes is shorter than a header", ErrCorrupt, size)
		}
		return nil, err
	}
	h, err := DecodeHeader(buf, size)
	if err != nil {
		return nil, err
	}
	if writable && h.Version == 1 {
		return nil, fmt.Errorf("%w: v1 (WithoutFreeSpace) images are supported read-only", ErrReadOnly)
	}
	d := &Delta{path: path, f: f, h: h, writable: writable}
	cs := h.ClusterSize()
	d.next = (max(size, h.DataStart()) + cs - 1) / cs * cs
	d.reserved = d.next
	if writable {
		if err := d.setInUse(true); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *Delta) setInUse(inUse bool) error {
	h := d.h
	h.InUse = inUse
	if err := d.writeHeader(h); err != nil {
		return err
	}
	if err := d.sync(); err != nil {
		return err
	}
	d.h = h
	return nil
}

// writeHeader writes h over the delta's header (not synced).
func (d *Delta) writeHeader(h Header) error {
	if _, err := d.f.WriteAt(h.Encode(), 0); err != nil {
		return fmt.Errorf("%w: write header of %s: %w", ErrSyncFailed, d.path, err)
	}
	return nil
}

// sync makes the delta's data durable (fdatasync). A failure wraps
// ErrSyncFailed: the chain that sees it stops taking writes.
func (d *Delta) sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("%w: fdatasync %s: %w", ErrSyncFailed, d.path, err)
	}
	return nil
}

// batChunk is how many BAT entries are read at once: bounded memory at any size.
const batChunk = 64 << 10

// forEachEntry calls fn for every non-zero BAT entry, reading the BAT in chunks.
func (d *Delta) forEachEntry(fn func(vc, entry uint32) error) error {
	buf := make([]byte, 4*min(batChunk, int64(d.h.BATEntries)))
	// A 64-bit counter: a uint32 one wraps to 0 for BATs near 2^32 entries
	// and the loop would never end.
	for start64 := uint64(0); start64 < uint64(d.h.BATEntries); start64 += batChunk {
		start := uint32(start64)
		n := min(uint32(batChunk), d.h.BATEntries-start)
		b := buf[:4*n]
		if _, err := d.f.ReadAt(b, HeaderSize+4*int64(start)); err != nil {
			return fmt.Errorf("read BAT: %w", err)
		}
		for i := range n {
			if e := binary.LittleEndian.Uint32(b[4*i:]); e != 0 {
				if err := fn(start+i, e); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// entryError says what is wrong with a BAT entry, or nil.
func (d *Delta) entryError(vc, entry uint32, fileSize int64) error {
	off := d.h.clusterOffset(entry)
	switch {
	case off < d.h.DataStart():
		return fmt.Errorf("%w: BAT entry %d points at offset %d, inside the header/BAT area", ErrCorrupt, vc, off)
	case off+d.h.ClusterSize() > fileSize:
		return fmt.Errorf("%w: BAT entry %d points at offset %d, past the end of the %d-byte file", ErrCorrupt, vc, off, fileSize)
	case d.h.Version == 2 && off%d.h.ClusterSize() != 0:
		return fmt.Errorf("%w: BAT entry %d is not cluster aligned", ErrCorrupt, vc)
	}
	return nil
}

// setEntry writes one BAT entry. It is not synced: Flush does that, and the
// data it points at was synced before (ploop's ordering rule).
func (d *Delta) setEntry(vc, entry uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], entry)
	if _, err := d.f.WriteAt(b[:], HeaderSize+4*int64(vc)); err != nil {
		return fmt.Errorf("%w: write BAT entry %d of %s: %w", ErrSyncFailed, vc, d.path, err)
	}
	return nil
}

// close closes the file; with clean, the in-use mark of a writable delta is
// cleared first (a clean shutdown). Without, the mark is set again (best
// effort: a failed sync may have been the one that cleared it), so whoever
// opens the delta next checks it.
func (d *Delta) close(clean bool) error {
	var err error
	switch {
	case d.writable && clean:
		err = d.trimReserve()
		if err == nil {
			err = d.setInUse(false)
		}
	case d.writable:
		_ = d.setInUse(true)
	}
	return errors.Join(err, d.f.Close())
}
