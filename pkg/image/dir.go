package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// RootDeltaFile is the default name of the first delta of an image directory.
const RootDeltaFile = "root.hds"

// ErrBusy means another process has the image directory open for writing.
var ErrBusy = errors.New("image is in use by another process")

const lockFile = ".csi-ploop.lock"

// CreateOptions configures Create and CreateOnChain.
type CreateOptions struct {
	ClusterSize int64  // 0: 1 MiB
	DeltaFile   string // the new top delta; default "root.hds" (relative to dir, or absolute)
	FS          FS     // nil: the real file system
}

func (o *CreateOptions) defaults() {
	if o.ClusterSize == 0 {
		o.ClusterSize = DefaultClusterSize
	}
	if o.DeltaFile == "" {
		o.DeltaFile = RootDeltaFile
	}
	if o.FS == nil {
		o.FS = NewOSFS(false)
	}
}

// Create makes dir an image directory with one empty delta of size bytes.
// Instant at any size: the delta is sparse. Safe to retry: the descriptor,
// written last, is the commit point.
func Create(dir string, size int64, opts CreateOptions) error {
	return CreateOnChain(dir, nil, size, opts)
}

// CreateOnChain makes dir an image directory whose chain is base (frozen
// delta files, bottom..top, relative to dir or absolute) plus a new empty top.
// This is how restores and clones are made: constant time whatever the data.
func CreateOnChain(dir string, base []string, size int64, opts CreateOptions) error {
	opts.defaults()
	h, err := NewHeader(size, opts.ClusterSize)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := readDescriptor(opts.FS, dir); err == nil {
		return fmt.Errorf("%s: %w", dir, os.ErrExist)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	desc, err := descriptorOnChain(opts.FS, dir, base, size, opts.ClusterSize)
	if err != nil {
		return err
	}
	guid := NewGUID()
	if err := createDelta(opts.FS, resolve(dir, opts.DeltaFile), h); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if desc == nil {
		desc = NewDescriptor(size, opts.ClusterSize, guid, opts.DeltaFile)
	} else {
		desc.AddTop(guid, opts.DeltaFile)
	}
	if err := desc.write(opts.FS, dir); err != nil {
		return err
	}
	return opts.FS.SyncDir(filepath.Dir(filepath.Clean(dir)))
}

// descriptorOnChain describes the frozen chain base, checking each delta.
func descriptorOnChain(fsys FS, dir string, base []string, size, clusterSize int64) (*Descriptor, error) {
	var desc *Descriptor
	for _, file := range base {
		d, err := openDelta(fsys, resolve(dir, file), false)
		if err != nil {
			return nil, err
		}
		dh := d.h
		d.close(true)
		if dh.ClusterSize() != clusterSize {
			return nil, fmt.Errorf("%w: delta %s has %d-byte clusters, want %d", ErrInvalid, file, dh.ClusterSize(), clusterSize)
		}
		if dh.Size() > size {
			return nil, fmt.Errorf("%w: delta %s is larger (%d bytes) than the new image (%d)", ErrInvalid, file, dh.Size(), size)
		}
		if desc == nil {
			desc = NewDescriptor(size, clusterSize, NewGUID(), file)
		} else {
			desc.AddTop(NewGUID(), file)
		}
	}
	return desc, nil
}

// Image is an open image directory: its descriptor and chain.
type Image struct {
	Dir     string
	fs      FS
	desc    *Descriptor
	chain   *Chain
	lock    *os.File
	journal *PendingJournal // nil: none
	// mu serialises the operations that rewrite the descriptor (Snapshot,
	// Grow, Merge): each builds the next descriptor from the current one.
	mu sync.Mutex
}

// OpenOptions configures OpenDir.
type OpenOptions struct {
	ReadOnly bool
	FS       FS // nil: the real file system with direct I/O
	// Journal, on a writable open, is replayed onto the top before its
	// crash recovery and then records pending allocations (journal.go).
	// The image owns it from the call on: Close (or a failed open) closes it.
	Journal *PendingJournal
}

// OpenDir opens the image directory's chain. A writable open takes an
// exclusive lock on the directory; a second writer gets ErrBusy.
func OpenDir(dir string, opts OpenOptions) (*Image, error) {
	if opts.FS == nil {
		opts.FS = NewOSFS(true)
	}
	img := &Image{Dir: dir, fs: opts.FS, journal: opts.Journal}
	if opts.ReadOnly {
		img.journal = nil
		if opts.Journal != nil {
			opts.Journal.Close()
		}
	}
	err := img.open(opts.ReadOnly)
	if err != nil {
		img.unlock()
		if img.journal != nil {
			img.journal.Close()
		}
		return nil, err
	}
	return img, nil
}

func (img *Image) open(readOnly bool) error {
	if !readOnly {
		if err := img.takeLock(); err != nil {
			return err
		}
	}
	desc, err := readDescriptor(img.fs, img.Dir)
	if err != nil {
		return err
	}
	img.desc = desc
	img.chain, err = img.openChain(readOnly)
	return err
}

func (img *Image) openChain(readOnly bool) (*Chain, error) {
	files, err := img.desc.ChainFiles(img.Dir)
	if err != nil {
		return nil, err
	}
	top := files[len(files)-1]
	if !readOnly && img.journal != nil {
		// Before the recovery below: it would punch the journal's
		// clusters as leaked space.
		if err := replayJournal(img.fs, top, img.journal); err != nil {
			return nil, err
		}
	}
	if !readOnly {
		if err := recoverDirtyTop(img.fs, top); err != nil {
			return nil, err
		}
	}
	// Not ChainOptions.Journal: that would replay the journal a second time.
	c, err := OpenChain(files, ChainOptions{FS: img.fs, ReadOnly: readOnly})
	if err != nil {
		return nil, err
	}
	if !readOnly && img.journal != nil {
		c.bindJournal(img.journal)
	}
	if c.Size() != img.desc.Size() && !readOnly {
		// A crash between growing the delta and rewriting the descriptor: the
		// delta header is the truth about the BAT; follow it.
		img.desc.SetSize(max(c.Size(), img.desc.Size()))
		if err := c.Grow(img.desc.Size()); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// recoverDirtyTop checks a top delta that was not closed cleanly, as ploop
// does on mount: leaked space after a crash is trimmed and the mark cleared;
// real corruption refuses the open rather than guess at the data.
func recoverDirtyTop(fsys FS, top string) error {
	f, err := fsys.Open(top, false)
	if err != nil {
		return fmt.Errorf("open delta: %w", err)
	}
	buf := make([]byte, HeaderSize)
	_, rerr := f.ReadAt(buf, 0)
	f.Close()
	if rerr != nil || binary.LittleEndian.Uint32(buf[44:]) != inUseMark {
		return nil // clean, or so broken that opening it reports why
	}
	r, err := checkDelta(fsys, top, false)
	if err != nil {
		return err
	}
	if rep := (&Report{Deltas: []DeltaReport{*r}}); !rep.OK() {
		return fmt.Errorf("%w: %s was not closed cleanly and has errors; run `csi-ploop image check --repair` (%s)",
			ErrCorrupt, top, r.Problems[0].Message)
	}
	_, err = checkDelta(fsys, top, true)
	return err
}

// withDirLock takes the image lock of the closed image directory dir
// (ErrBusy when it is open elsewhere), reads the descriptor and runs fn;
// the lock is held from before the read to the end.
func withDirLock(fsys FS, dir string, fn func(desc *Descriptor) error) error {
	img := &Image{Dir: dir, fs: fsys}
	if err := img.takeLock(); err != nil {
		return err
	}
	defer img.unlock()
	desc, err := readDescriptor(fsys, dir)
	if err != nil {
		return err
	}
	return fn(desc)
}

func (img *Image) takeLock() error {
	if _, ok := img.fs.(onDisk); !ok {
		return nil // test file systems live in one process
	}
	f, err := os.OpenFile(filepath.Join(img.Dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock image: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w", img.Dir, ErrBusy)
		}
		return fmt.Errorf("lock image: %w", err)
	}
	img.lock = f
	return nil
}

func (img *Image) unlock() {
	if img.lock != nil {
		img.lock.Close()
		img.lock = nil
	}
}

// Chain returns the open chain.
func (img *Image) Chain() *Chain { return img.chain }

// Descriptor returns the current descriptor (do not modify).
func (img *Image) Descriptor() *Descriptor { return img.desc }

// Close closes the chain (clean shutdown) and releases the lock.
func (img *Image) Close() error {
	err := img.chain.Close()
	if img.journal != nil {
		err = errors.Join(err, img.journal.Close())
		img.journal = nil
	}
	img.unlock()
	return err
}

// SnapshotOptions configures Snapshot.
type SnapshotOptions struct {
	NewDeltaFile string // default "root.hds.{GUID}" next to the current top
}

// Snapshot freezes the top delta and returns its GUID, which now names the
// snapshot; writes go on in a new delta. Works while I/O runs (it waits for
// in-flight requests); the descriptor rename is the commit point.
func (img *Image) Snapshot(opts SnapshotOptions) (string, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	frozen := img.desc.Snapshots.TopGUID
	next, file, err := img.desc.withNewTop(opts)
	if err != nil {
		return "", err
	}
	err = img.chain.Snapshot(resolve(img.Dir, file), func() error { return next.write(img.fs, img.Dir) })
	if err != nil {
		return "", err
	}
	img.desc = next
	return frozen, nil
}

// Grow raises the virtual size: the delta first, then the descriptor.
func (img *Image) Grow(size int64) error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if size%SectorSize != 0 {
		return fmt.Errorf("%w: size %d is not a multiple of 512", ErrInvalid, size)
	}
	if err := img.chain.Grow(size); err != nil {
		return err
	}
	next := *img.desc
	next.Storage = []Storage{img.desc.Storage[0]}
	next.SetSize(size)
	if err := next.write(img.fs, img.Dir); err != nil {
		return err
	}
	img.desc = &next
	return nil
}

// SnapshotDir takes a snapshot of a closed image directory. It reads only
// the descriptor and the top delta's header (its BAT too if the top was not
// closed cleanly): the cost depends neither on the data, nor on the size,
// nor on the depth of the chain. Crash safety as for Image.Snapshot: the new
// delta is durable before the descriptor rename that commits it.
func SnapshotDir(dir string, opts SnapshotOptions) (string, error) {
	fsys := NewOSFS(false)
	img := &Image{Dir: dir, fs: fsys}
	if err := img.takeLock(); err != nil {
		return "", err
	}
	defer img.unlock()
	desc, err := readDescriptor(fsys, dir)
	if err != nil {
		return "", err
	}
	files, err := desc.ChainFiles(dir)
	if err != nil {
		return "", err
	}
	top := files[len(files)-1]
	if err := recoverDirtyTop(fsys, top); err != nil {
		return "", err
	}
	h, err := ReadHeader(top)
	if err != nil {
		return "", err
	}
	next, file, err := desc.withNewTop(opts)
	if err != nil {
		return "", err
	}
	next.SetSize(max(h.Size(), desc.Size())) // a grow cut short after the delta: the delta is right
	nh, err := NewHeader(next.Size(), h.ClusterSize())
	if err != nil {
		return "", err
	}
	if err := createDelta(fsys, resolve(dir, file), nh); err != nil {
		return "", err
	}
	if err := next.write(fsys, dir); err != nil {
		return "", err
	}
	return desc.Snapshots.TopGUID, nil
}

// GrowDir grows a closed image directory to size bytes.
func GrowDir(dir string, size int64) error {
	img, err := OpenDir(dir, OpenOptions{FS: NewOSFS(false)})
	if err != nil {
		return err
	}
	return errors.Join(img.Grow(size), img.Close())
}

// AllocatedBytes returns the bytes the file system stores for a delta file.
func AllocatedBytes(path string) (int64, error) { return allocatedBytes(path) }

// IsImageDir reports whether path is a directory holding a descriptor.
func IsImageDir(path string) bool {
	st, err := os.Stat(filepath.Join(path, DescriptorFile))
	return err == nil && st.Mode().IsRegular()
}

// sameGUID compares GUIDs case-insensitively, as ploop does.
func sameGUID(a, b string) bool { return strings.EqualFold(a, b) }
