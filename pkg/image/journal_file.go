package image

import (
	"cmp"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// bootIDFile names the current boot; a journal written under another boot
// id is never replayed (its memory cannot have survived a reboot anyway,
// unless it was put on a persistent file system by mistake).
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// OpenPendingJournal maps the journal file at path (created if missing,
// room for entries allocations; 0: DefaultJournalEntries), shared, so that
// what the process records survives it. Put it on tmpfs (/run): the journal
// must not outlive the boot, and on tmpfs its stores never reach a disk.
// What the file holds is kept for the next writable open (OpenDir or
// OpenChain with it in the options), which replays it if it belongs to
// the top delta opened, on this boot. log (nil: discarded) hears why a
// journal was not replayed.
func OpenPendingJournal(path string, entries int, log *slog.Logger) (*PendingJournal, error) {
	boot, err := readBootID()
	if err != nil {
		return nil, err
	}
	entries = cmp.Or(entries, DefaultJournalEntries)
	want := int64(journalHeaderSize + journalEntrySize*entries)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	defer f.Close() // the mapping keeps what it needs
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	// Sparse: only the pages entries reach use memory (or, where /run is
	// not tmpfs, disk), so a journal left behind costs little.
	size := max(st.Size(), want) // a larger one may hold more entries: keep them
	if size != st.Size() {
		if err := f.Truncate(size); err != nil {
			return nil, fmt.Errorf("open journal: %w", err)
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map journal %s: %w", path, err)
	}
	return &PendingJournal{mem: mem, boot: boot, release: func() error { return unix.Munmap(mem) },
		log: cmp.Or(log, slog.New(slog.DiscardHandler)).With("journal", path)}, nil
}

func readBootID() ([16]byte, error) {
	var id [16]byte
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return id, fmt.Errorf("read boot id: %w", err)
	}
	digits := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
	if len(digits) != 32 {
		return id, fmt.Errorf("boot id %q: not a UUID", b)
	}
	if _, err := hex.Decode(id[:], []byte(digits)); err != nil {
		return id, fmt.Errorf("boot id %q: %w", b, err)
	}
	return id, nil
}

// Identity implements identified: device, inode and birth time (statx).
func (o *osFile) Identity() (FileIdentity, error) {
	var st unix.Statx_t
	err := unix.Statx(int(o.f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_BTIME, &st)
	if err != nil {
		return FileIdentity{}, fmt.Errorf("statx %s: %w", o.f.Name(), err)
	}
	id := FileIdentity{Dev: unix.Mkdev(st.Dev_major, st.Dev_minor), Ino: st.Ino}
	if st.Mask&unix.STATX_BTIME != 0 {
		id.Birth = st.Btime.Sec*1e9 + int64(st.Btime.Nsec)
	}
	return id, nil
}
