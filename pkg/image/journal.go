package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"unsafe"
)

// PendingJournal records the allocations whose BAT entries are pending
// (commit.go) in memory that outlives the serving process but not the boot:
// a small file on tmpfs (/run), mapped shared, or for tests a plain buffer.
// An allocating write appends (vc, entry) once its data is written and
// before it is acknowledged: two stores into the mapping, no system call.
// If the process dies (SIGKILL, a crash; the kernel lives on and so does
// the page cache holding the data), the next writable open of the same top
// delta on the same boot applies the entries to the BAT in ploop's order
// (fdatasync the data, write the entries, fdatasync) before the recovery of
// the dirty top would take those clusters for leaked space. A power loss
// takes the journal with it (tmpfs, or a boot id that no longer matches):
// then the group-commit guarantees alone hold, as they must, because
// unflushed data may be gone too.
//
// The journal logic is the same for both backings: the seam is the shared
// memory (OpenPendingJournal maps a file, NewMemoryJournal takes a buffer).
type PendingJournal struct {
	mu      sync.Mutex // serialises add and commit (compaction)
	mem     []byte
	boot    [16]byte
	release func() error // unmaps and closes the backing file; nil for memory
	log     *slog.Logger
}

// Journal layout, little-endian:
//
//	0   magic "PLOOPPAJ"        8 bytes
//	8   version                 u32 (1)
//	12  entry size              u32 (12)
//	16  capacity (entries)      u32
//	20  flags                   u32 (bit 0: the chain failed, do not replay)
//	24  boot id                 16 bytes (/proc/sys/kernel/random/boot_id)
//	40  top delta: device       u64
//	48  top delta: inode        u64
//	56  top delta: birth time   i64 (ns, 0 where the file system has none)
//	64  cluster size            u64
//	72  count                   u32 (stored last: publishes an entry)
//	128 entries: vc u32, BAT entry u32, flags u32 (bit 0: epoch parity)
const (
	journalMagic      = "PLOOPPAJ"
	journalVersion    = 1
	journalHeaderSize = 128
	journalEntrySize  = 12
	journalFailed     = 1
	offFlags          = 20
	offCount          = 72
	// DefaultJournalEntries bounds the allocations between two commits; a
	// full journal forces a commit. 64 Ki entries: 768 KiB of tmpfs at most
	// (pages are used only as entries reach them), 4 GiB of unflushed
	// allocation with 64 KiB clusters, 64 GiB with 1 MiB ones.
	DefaultJournalEntries = 1 << 16
)

// ErrJournal means the journal's memory does not hold a valid journal.
var ErrJournal = errors.New("invalid pending-allocation journal")

// FileIdentity names a delta file for as long as it exists: device, inode
// and birth time (an inode number is reused after a delete; the birth time
// tells the new file from the old where the file system records it).
type FileIdentity struct {
	Dev, Ino uint64
	Birth    int64
}

// identified is implemented by Files that can name themselves; a chain
// whose top cannot runs without a journal.
type identified interface{ Identity() (FileIdentity, error) }

// JournalHeader is the decoded header of a journal.
type JournalHeader struct {
	Capacity    uint32
	Failed      bool
	Boot        [16]byte
	Top         FileIdentity
	ClusterSize int64
	Count       uint32
}

// JournalEntry is one recorded allocation.
type JournalEntry struct {
	VC, Entry uint32
	Parity    uint8
}

// DecodeJournal validates and decodes a journal image. An all-zero buffer
// (a fresh file) is not a journal either: ErrJournal.
func DecodeJournal(b []byte) (JournalHeader, []JournalEntry, error) {
	var h JournalHeader
	if len(b) < journalHeaderSize {
		return h, nil, fmt.Errorf("%w: %d bytes, shorter than the header", ErrJournal, len(b))
	}
	if string(b[:8]) != journalMagic {
		return h, nil, fmt.Errorf("%w: bad magic", ErrJournal)
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != journalVersion {
		return h, nil, fmt.Errorf("%w: version %d", ErrJournal, v)
	}
	if es := le.Uint32(b[12:]); es != journalEntrySize {
		return h, nil, fmt.Errorf("%w: entry size %d", ErrJournal, es)
	}
	h.Capacity = le.Uint32(b[16:])
	if uint64(h.Capacity) > uint64(len(b)-journalHeaderSize)/journalEntrySize {
		return h, nil, fmt.Errorf("%w: capacity %d does not fit in %d bytes", ErrJournal, h.Capacity, len(b))
	}
	flags := le.Uint32(b[offFlags:])
	if flags&^journalFailed != 0 {
		return h, nil, fmt.Errorf("%w: unknown flags %#x", ErrJournal, flags)
	}
	h.Failed = flags&journalFailed != 0
	copy(h.Boot[:], b[24:40])
	h.Top = FileIdentity{Dev: le.Uint64(b[40:]), Ino: le.Uint64(b[48:]), Birth: int64(le.Uint64(b[56:]))}
	cs := le.Uint64(b[64:])
	if cs < SectorSize || cs > 1<<30 || cs&(cs-1) != 0 {
		return h, nil, fmt.Errorf("%w: cluster size %d", ErrJournal, cs)
	}
	h.ClusterSize = int64(cs)
	h.Count = le.Uint32(b[offCount:])
	if h.Count > h.Capacity {
		return h, nil, fmt.Errorf("%w: %d entries, capacity %d", ErrJournal, h.Count, h.Capacity)
	}
	entries := make([]JournalEntry, h.Count)
	for i := range entries {
		e := b[journalHeaderSize+journalEntrySize*i:]
		ef := le.Uint32(e[8:])
		if ef > 1 {
			return h, nil, fmt.Errorf("%w: entry %d has flags %#x", ErrJournal, i, ef)
		}
		entries[i] = JournalEntry{VC: le.Uint32(e), Entry: le.Uint32(e[4:]), Parity: uint8(ef)}
	}
	return h, entries, nil
}

// NewMemoryJournal returns a journal kept in mem (at least 128 bytes plus
// 12 per entry), as if booted as boot: what tests use to outlive a
// simulated process crash (keep mem) or not (new boot id).
func NewMemoryJournal(mem []byte, boot [16]byte) (*PendingJournal, error) {
	if len(mem) < journalHeaderSize+journalEntrySize {
		return nil, fmt.Errorf("%w: %d bytes hold no entry", ErrInvalid, len(mem))
	}
	return &PendingJournal{mem: mem, boot: boot, log: slog.New(slog.DiscardHandler)}, nil
}

func (j *PendingJournal) capacity() uint32 {
	return uint32((len(j.mem) - journalHeaderSize) / journalEntrySize)
}

// word returns the u32 at off of the mapping for atomic access (off is a
// multiple of 4 and the mapping is page or allocation aligned).
func (j *PendingJournal) word(off int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&j.mem[off]))
}

// load returns the entries to replay onto top, or nil with the reason the
// journal does not apply ("" when it is empty).
func (j *PendingJournal) load(top FileIdentity, cs int64) ([]JournalEntry, string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	h, entries, err := DecodeJournal(j.mem)
	switch {
	case err != nil:
		if allZero(j.mem[:journalHeaderSize]) {
			return nil, "" // a fresh file
		}
		return nil, err.Error()
	case h.Count == 0:
		return nil, ""
	case h.Boot != j.boot:
		return nil, "written before the last boot"
	case h.Top != top:
		return nil, "written for another top delta"
	case h.ClusterSize != cs:
		return nil, fmt.Sprintf("written for %d-byte clusters, the top has %d", h.ClusterSize, cs)
	case h.Failed:
		return nil, "the chain that wrote it failed a sync: its unflushed data may be lost"
	}
	return entries, ""
}

// reset empties the journal and binds it to top. The count goes to zero
// first: a crash in between leaves nothing to replay.
func (j *PendingJournal) reset(top FileIdentity, cs int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.word(offCount).Store(0)
	le := binary.LittleEndian
	b := j.mem
	copy(b, journalMagic)
	le.PutUint32(b[8:], journalVersion)
	le.PutUint32(b[12:], journalEntrySize)
	le.PutUint32(b[16:], j.capacity())
	j.word(offFlags).Store(0)
	copy(b[24:40], j.boot[:])
	le.PutUint64(b[40:], top.Dev)
	le.PutUint64(b[48:], top.Ino)
	le.PutUint64(b[56:], uint64(top.Birth))
	le.PutUint64(b[64:], uint64(cs))
}

// add appends an allocation; false if the journal is full (commit first).
func (j *PendingJournal) add(vc, entry uint32, parity uint64) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := j.word(offCount).Load()
	if n >= j.capacity() {
		return false
	}
	e := j.mem[journalHeaderSize+journalEntrySize*int(n):]
	binary.LittleEndian.PutUint32(e, vc)
	binary.LittleEndian.PutUint32(e[4:], entry)
	binary.LittleEndian.PutUint32(e[8:], uint32(parity))
	j.word(offCount).Store(n + 1) // publishes the entry
	return true
}

// commit drops the entries of the epoch with parity, now in the BAT on
// disk. Kept entries move down in order, so that a crash halfway leaves
// each one at least once (duplicates, and entries already in the BAT, are
// harmless: replay skips entries the on-disk BAT has).
func (j *PendingJournal) commit(parity uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := int(j.word(offCount).Load())
	kept := 0
	for i := range n {
		e := j.mem[journalHeaderSize+journalEntrySize*i:]
		if uint64(binary.LittleEndian.Uint32(e[8:])) == parity {
			continue
		}
		if kept != i {
			copy(j.mem[journalHeaderSize+journalEntrySize*kept:], e[:journalEntrySize])
		}
		kept++
	}
	j.word(offCount).Store(uint32(kept))
}

// clear empties the journal (a clean close: every entry is in the BAT).
func (j *PendingJournal) clear() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.word(offCount).Store(0)
}

// fail marks the journal as not to be replayed: a sync of the chain
// failed, so the page cache may have dropped the data its entries point at.
func (j *PendingJournal) fail() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.word(offFlags).Store(journalFailed)
}

// Close lets go of the backing memory.
func (j *PendingJournal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.release == nil {
		return nil
	}
	err := j.release()
	j.release, j.mem = nil, nil
	return err
}
