package image

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The file-backed journal on the real file system: a process that dies
// after acknowledged allocating writes (simulated: its chain is abandoned,
// its lock and mapping let go, nothing flushed) loses none of them when the
// next open maps the same journal file; a journal written for another top
// delta is ignored.
func TestFileJournalAcrossProcessCrash(t *testing.T) {
	dir, run := t.TempDir(), t.TempDir()
	jpath := filepath.Join(run, "pending-alloc")
	if err := Create(dir, 64<<20, CreateOptions{ClusterSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	open := func() (*Image, *PendingJournal) {
		t.Helper()
		j, err := OpenPendingJournal(jpath, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		img, err := OpenDir(dir, OpenOptions{Journal: j})
		if err != nil {
			t.Fatal(err)
		}
		return img, j
	}
	writeAndDie := func(base int64) []int64 {
		t.Helper()
		img, j := open()
		var offs []int64
		for i := range 16 {
			off := base + int64(i)*(192<<10) + 4096
			if _, err := img.Chain().WriteAt(pattern(byte(i), 4096), off); err != nil {
				t.Fatal(err)
			}
			offs = append(offs, off)
		}
		// The process dies: the kernel drops its lock and its mapping,
		// closes its files; the page cache keeps what it wrote.
		img.unlock()
		for _, d := range img.chain.deltas {
			d.f.Close()
		}
		j.Close()
		return offs
	}
	offs := writeAndDie(0)
	img, _ := open()
	got := make([]byte, 4096)
	for i, off := range offs {
		if _, err := img.Chain().ReadAt(got, off); err != nil || !bytes.Equal(got, pattern(byte(i), 4096)) {
			t.Fatalf("acknowledged write %d lost (%v)", i, err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Check(dir, false); err != nil || !r.Clean() {
		t.Fatalf("check: %v %+v", err, r)
	}

	// The same again, but the top is replaced by another file before the
	// next open: the journal is not for it and must not touch it.
	offs = writeAndDie(32 << 20)
	top := filepath.Join(dir, RootDeltaFile)
	data, err := os.ReadFile(top)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(top); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(top, data, 0o600); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if _, entries, err := DecodeJournal(mem); err != nil || len(entries) == 0 {
		t.Fatalf("the dead process's journal: %v, %d entries", err, len(entries))
	}
	img, _ = open()
	for i, off := range offs[1:] {
		if _, err := img.Chain().ReadAt(got, off); err != nil || bytes.Equal(got, pattern(byte(i+1), 4096)) {
			t.Fatalf("write %d came back through a journal of another file (%v)", i+1, err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}
