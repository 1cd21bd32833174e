package image

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// The process-crash harness: the serving process dies (SIGKILL) after any
// single file-system operation of a workload that flushes only now and
// then, while the kernel, and with it the page cache, lives on. The next
// open, given the journal the dead process wrote, must find every write
// that was acknowledged (its step completed), flushed or not. A power loss
// at the same point (the journal gone with the boot) must keep the usual
// guarantees: flushed data intact, nothing pointing at unsynced data.

var (
	bootA = [16]byte{0xa}
	bootB = [16]byte{0xb}
)

func flushStep() crashStep {
	return crashStep{name: "flush", durable: true,
		do:    func(img *Image) error { return img.Chain().Flush() },
		model: func(*diskModel) {}}
}

// processCrashWorkload is the crash workload with a flush after its first
// two steps and none after the others (snapshot and grow commit). Batches
// are taken apart: each write in them is acknowledged on its own.
func processCrashWorkload() []crashStep {
	var out []crashStep
	for i, s := range crashWorkload() {
		if i == 2 {
			out = append(out, flushStep())
		}
		if s.sub != nil {
			out = append(out, s.sub...)
			continue
		}
		out = append(out, s)
	}
	return out
}

func newJournalMem() []byte { return make([]byte, journalHeaderSize+journalEntrySize*4096) }

func memJournal(t *testing.T, mem []byte, boot [16]byte) *PendingJournal {
	t.Helper()
	j, err := NewMemoryJournal(mem, boot)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// runUntilKilled runs steps without flushing after them and returns how
// many completed before the process was killed (memFS.kill).
func runUntilKilled(fsys *memFS, dir string, steps []crashStep, j *PendingJournal) (done int, err error) {
	defer func() {
		if r := recover(); r != nil {
			if r != errKilled {
				panic(r)
			}
			err = errKilled
		}
	}()
	img, err := OpenDir(dir, OpenOptions{FS: fsys, Journal: j})
	if err != nil {
		return 0, err
	}
	for i, s := range steps {
		if err := s.do(img); err != nil {
			return i, fmt.Errorf("%s: %w", s.name, err)
		}
		done = i + 1
	}
	return done, img.Close()
}

func modelStates(steps []crashStep) []diskModel {
	states := []diskModel{{size: 1 << 30, clusters: map[int64][]byte{}}}
	for _, s := range steps {
		next := states[len(states)-1].clone()
		s.model(&next)
		states = append(states, next)
	}
	return states
}

// lastDurable returns the index of the last state a power loss after done
// completed steps must keep: the one after the last step that committed.
func lastDurable(steps []crashStep, done int) int {
	for i := done; i > 0; i-- {
		if steps[i-1].durable {
			return i
		}
	}
	return 0
}

// killAtEveryOperation kills the process after every operation of the
// workload and checks recovery: after a process crash with the journal (or
// without one, if journal is false), and after a power loss.
func killAtEveryOperation(t *testing.T, journal bool) (processErrs, powerErrs []error) {
	t.Helper()
	steps := processCrashWorkload()
	states := modelStates(steps)
	fsys, dir := newCrashImage(t)
	base := fsys.ops
	if n, err := runUntilKilled(fsys, dir, steps, memJournal(t, newJournalMem(), bootA)); err != nil || n != len(steps) {
		t.Fatalf("workload without crash: %d steps, %v", n, err)
	}
	total := fsys.ops - base
	t.Logf("workload: %d steps, %d file-system operations", len(steps), total)
	for cut := 0; cut < total; cut++ {
		fsys, dir := newCrashImage(t)
		mem := newJournalMem()
		fsys.kill = fsys.ops + cut
		var j *PendingJournal
		if journal {
			j = memJournal(t, mem, bootA)
		}
		done, err := runUntilKilled(fsys, dir, steps, j)
		if !errors.Is(err, errKilled) {
			t.Fatalf("cut %d: workload error %v, want a kill", cut, err)
		}
		fsys.kill = -1
		// The kernel lives on: every completed operation is there, and so is
		// the journal's memory, on the same boot.
		after := fsys.reboot(keepAll)
		var rj *PendingJournal
		if journal {
			rj = memJournal(t, slices.Clone(mem), bootA)
		}
		if err := verifyWithJournal(after, dir, states[done:min(done+2, len(states))], rj); err != nil {
			processErrs = append(processErrs, fmt.Errorf("cut %d, process crash after %d steps: %w", cut, done, err))
		}
		for _, model := range []crashModel{syncedOnly, metadataFirst} {
			after := fsys.reboot(model)
			want := states[lastDurable(steps, done):min(done+2, len(states))]
			if err := verifyWithJournal(after, dir, want, memJournal(t, slices.Clone(mem), bootB)); err != nil {
				powerErrs = append(powerErrs, fmt.Errorf("cut %d model %d, power loss after %d steps: %w", cut, model, done, err))
			}
		}
	}
	return processErrs, powerErrs
}

func TestProcessCrashKeepsAcknowledgedWrites(t *testing.T) {
	proc, power := killAtEveryOperation(t, true)
	for _, errs := range [][]error{proc, power} {
		if len(errs) > 0 {
			t.Errorf("%d recoveries failed; first: %v", len(errs), errs[0])
		}
	}
}

// Without the journal, a process crash loses acknowledged allocating
// writes (the dirty-top recovery reclaims their clusters): the harness
// above can fail, and this is the regression the journal fixes.
func TestProcessCrashWithoutJournalLosesWrites(t *testing.T) {
	proc, power := killAtEveryOperation(t, false)
	if len(proc) == 0 {
		t.Fatal("no acknowledged write was lost without the journal: the harness cannot tell")
	}
	t.Logf("without the journal, %d process crashes lost acknowledged writes; first: %v", len(proc), proc[0])
	if len(power) > 0 {
		t.Fatalf("power loss without the journal: %v", power[0])
	}
}

// A power loss while the successor replays the journal of a killed
// process: the replay's own order (data synced, then the BAT) must keep the
// crash guarantees at every operation.
func TestPowerLossDuringReplay(t *testing.T) {
	steps := processCrashWorkload()
	states := modelStates(steps)
	// Kill right after the batch of allocations in three BAT pages.
	stop := slices.IndexFunc(steps, func(s crashStep) bool { return s.name == "snapshot" })
	fsys, dir := newCrashImage(t)
	mem := newJournalMem()
	img, err := OpenDir(dir, OpenOptions{FS: fsys, Journal: memJournal(t, mem, bootA)})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps[:stop] {
		if err := s.do(img); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	if h, _, err := DecodeJournal(mem); err != nil || h.Count < 4 {
		t.Fatalf("journal holds %d entries (%v), want the batch's", h.Count, err)
	}
	killed := fsys.reboot(keepAll) // abandoned without Close: the process died
	for cut := 0; ; cut++ {
		live := killed.reboot(keepAll)
		live.limit = live.ops + cut
		img, err := OpenDir(dir, OpenOptions{FS: live, Journal: memJournal(t, slices.Clone(mem), bootA)})
		if err == nil {
			img.Close()
			if cut == 0 {
				t.Fatal("the replaying open did no file-system operation")
			}
			t.Logf("the replaying open was cut at each of its %d operations", cut)
			return
		}
		if !errors.Is(err, errCrashed) {
			t.Fatalf("cut %d: %v", cut, err)
		}
		for _, model := range []crashModel{syncedOnly, metadataFirst} {
			want := states[lastDurable(steps, stop) : stop+1]
			if err := verifyAfterCrash(live.reboot(model), dir, want); err != nil {
				t.Errorf("cut %d model %d: %v", cut, model, err)
			}
		}
	}
}

// A full journal makes the allocation commit first: a process crash
// after more allocations than the journal holds loses none of them.
func TestFullJournalCommits(t *testing.T) {
	fsys, dir := newCrashImage(t)
	mem := make([]byte, journalHeaderSize+journalEntrySize*3)
	img, err := OpenDir(dir, OpenOptions{FS: fsys, Journal: memJournal(t, mem, bootA)})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		if _, err := img.Chain().WriteAt(pattern(byte(i), 4096), int64(i)*crashCluster*3); err != nil {
			t.Fatal(err)
		}
	}
	// Abandoned: the process died. Its journal held at most 3 entries.
	after := fsys.reboot(keepAll)
	img, err = OpenDir(dir, OpenOptions{FS: after, Journal: memJournal(t, slices.Clone(mem), bootA)})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := make([]byte, 4096)
	for i := range n {
		if _, err := img.Chain().ReadAt(got, int64(i)*crashCluster*3); err != nil || !bytes.Equal(got, pattern(byte(i), 4096)) {
			t.Fatalf("write %d lost after the process crash (%v)", i, err)
		}
	}
}

// A journal from another boot, for another file or of a chain whose sync
// failed is not replayed; a clean close leaves it empty.
func TestJournalApplies(t *testing.T) {
	id := FileIdentity{Dev: 1, Ino: 7}
	j := memJournal(t, newJournalMem(), bootA)
	j.reset(id, crashCluster)
	if !j.add(3, 9, 1) || !j.add(4, 10, 0) {
		t.Fatal("add failed")
	}
	if e, why := j.load(id, crashCluster); len(e) != 2 || why != "" {
		t.Fatalf("load: %v %q", e, why)
	}
	j.commit(1)
	if e, _ := j.load(id, crashCluster); len(e) != 1 || e[0] != (JournalEntry{VC: 4, Entry: 10}) {
		t.Fatalf("after the commit of parity 1: %v", e)
	}
	other := memJournal(t, j.mem, bootB)
	for name, why := range map[string]string{
		"other boot":    func() string { _, w := other.load(id, crashCluster); return w }(),
		"other file":    func() string { _, w := j.load(FileIdentity{Dev: 1, Ino: 8}, crashCluster); return w }(),
		"other cluster": func() string { _, w := j.load(id, 1<<20); return w }(),
	} {
		if why == "" {
			t.Errorf("%s: replayed", name)
		}
	}
	j.fail()
	if e, why := j.load(id, crashCluster); e != nil || why == "" {
		t.Fatalf("failed chain's journal: %v %q", e, why)
	}
}

// A compaction cut short by the process's death leaves every kept entry
// at least once.
func TestJournalCompactionKeepsEntries(t *testing.T) {
	id := FileIdentity{Dev: 1, Ino: 7}
	j := memJournal(t, newJournalMem(), bootA)
	j.reset(id, crashCluster)
	for i := range uint32(8) {
		j.add(i, 100+i, uint64(i%3%2))
	}
	j.commit(0)
	e, _ := j.load(id, crashCluster)
	want := []JournalEntry{{1, 101, 1}, {4, 104, 1}, {7, 107, 1}}
	if !slices.Equal(e, want) {
		t.Fatalf("kept %v, want %v", e, want)
	}
}
