package attach_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/internal/iocheck"
	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// chain is the served chain's delta paths, bottom..top, as the descriptor
// names them (what a client puts in a merge request).
func (f *fixture) chain() []string {
	f.t.Helper()
	desc, err := image.ReadDescriptor(f.dir)
	if err != nil {
		f.t.Fatal(err)
	}
	files, err := desc.ChainFiles(f.dir)
	if err != nil {
		f.t.Fatal(err)
	}
	return files
}

// checkImage runs image check on the detached image: no errors.
func (f *fixture) checkImage() {
	f.t.Helper()
	r, err := image.Check(f.dir, false)
	if err != nil || !r.OK() {
		f.t.Fatalf("check after the merges: %v %+v", err, r)
	}
}

// TestOnlineMergeUnderLoad: merges of frozen pairs (each direction) and of
// the writable top as child (down: the writes during the copy are tracked
// and copied again at the switch; auto), while a verifying O_DIRECT writer runs on the
// device: no I/O error, every block reads back as last written (the writer
// reads back throughout and once more at the end), the chain loses one
// delta per merge, status shows the merge while it runs, and the image is
// clean after the detach.
func TestOnlineMergeUnderLoad(t *testing.T) {
	f := newFixture(t, 256<<20)
	// Small clusters: the writer touches a part of them between two
	// snapshots, so that merges have clusters to copy in both directions.
	if err := os.RemoveAll(f.dir); err != nil {
		t.Fatal(err)
	}
	if err := image.Create(f.dir, 256<<20, image.CreateOptions{ClusterSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	dev := f.attach()
	w, err := iocheck.Start(iocheck.Options{Path: dev, Size: 96 << 20, Seed: uint64(time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			w.Stop()
		}
	}()
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		if _, err := f.c.Snapshot(f.ctx(), f.dir, ""); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
	}
	for _, c := range []struct {
		name      string
		pair      func(d []string) (string, string)
		direction image.MergeDirection
	}{
		{"frozen pair down", func(d []string) (string, string) { return d[0], d[1] }, image.MergeDown},
		{"frozen pair up", func(d []string) (string, string) { return d[1], d[2] }, image.MergeUp},
		{"top as child, down", func(d []string) (string, string) { return d[len(d)-2], d[len(d)-1] }, image.MergeDown},
		{"top as child, auto", func(d []string) (string, string) { return d[len(d)-2], d[len(d)-1] }, image.MergeAuto},
	} {
		time.Sleep(300 * time.Millisecond)
		before := f.chain()
		parent, child := c.pair(before)
		var polls int
		res, err := f.c.Merge(f.ctx(), f.dir, attach.MergeRequest{Parent: parent, Child: child, Direction: c.direction,
			Progress: func(done, total int64) { polls++ }})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		t.Logf("%s: %+v (%d progress reports)", c.name, res, polls)
		if c.direction != image.MergeAuto && res.Direction != c.direction {
			t.Errorf("%s: merged %s", c.name, res.Direction)
		}
		if st := f.status(); st.Depth != len(before)-1 || st.Merge != nil {
			t.Fatalf("%s: depth %d after a merge of a %d-deep chain; merge still shown: %+v", c.name, st.Depth, len(before), st.Merge)
		}
		if got := f.chain(); len(got) != len(before)-1 {
			t.Fatalf("%s: descriptor's chain %v", c.name, got)
		}
	}
	time.Sleep(300 * time.Millisecond)
	r := w.Stop()
	stopped = true
	t.Logf("writer: %v", r)
	if !r.OK() || r.Writes == 0 {
		t.Fatalf("writer: %d I/O errors (%s), %d verify errors (%s), %d writes",
			r.IOErrors, r.FirstIOError, r.VerifyErrors, r.FirstVerifyError, r.Writes)
	}
	f.detach()
	f.checkImage()
}

// startMerge runs a merge of the image's two deltas (up: the filled parent
// into the top) in the background and waits until it has copied something.
func startMerge(t *testing.T, f *fixture) <-chan error {
	t.Helper()
	d := f.chain()
	done := make(chan error, 1)
	go func() {
		_, err := f.c.Merge(f.ctx(), f.dir, attach.MergeRequest{Parent: d[0], Child: d[1], Direction: image.MergeUp})
		done <- err
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if m := f.status().Merge; m != nil && m.Done > 0 {
			if m.Done >= m.Total {
				t.Skipf("the merge copied all of %d bytes before it could be interrupted (a very fast disk)", m.Total)
			}
			return done
		}
		select {
		case err := <-done:
			t.Fatalf("the merge ended before it could be interrupted: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the merge shows no progress")
		}
	}
}

// TestMergeCancelledByDetach: a detach does not wait for a merge: it
// cancels it (the caller gets ErrNotAttached: run it again, now offline),
// the chain is as before, the image clean, and the merge run again
// offline completes.
func TestMergeCancelledByDetach(t *testing.T) {
	f := newFixture(t, 1<<30)
	testhelp.FreezeFilled(t, f.dir, 768<<20)
	before := f.chain()
	f.attach()
	done := startMerge(t, f)
	began := time.Now()
	f.detach()
	err := <-done
	t.Logf("detach took %v; the merge answered %v", time.Since(began), err)
	if !errors.Is(err, attach.ErrNotAttached) {
		t.Fatalf("merge cancelled by a detach: %v, want ErrNotAttached", err)
	}
	if got := f.chain(); len(got) != len(before) {
		t.Fatalf("chain after a cancelled merge: %v, was %v", got, before)
	}
	f.checkImage()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, online, err := attach.MergeDir(ctx, f.dir, theSuite.runDir, attach.MergeRequest{Parent: before[0], Child: before[1]}, nil)
	if err != nil || online {
		t.Fatalf("the merge run again offline: %+v online %v: %v", res, online, err)
	}
	if got := f.chain(); len(got) != 1 {
		t.Fatalf("chain after the offline merge: %v", got)
	}
	f.checkImage()
}

// TestMergeClientGoneCancels: a client whose context ends stops waiting;
// the server cancels the merge (nobody would learn its result) and serves
// on; the merge asked again completes.
func TestMergeClientGoneCancels(t *testing.T) {
	f := newFixture(t, 1<<30)
	testhelp.FreezeFilled(t, f.dir, 768<<20)
	d := f.chain()
	f.attach()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.c.Merge(ctx, f.dir, attach.MergeRequest{Parent: d[0], Child: d[1], Direction: image.MergeUp})
		done <- err
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if m := f.status().Merge; m != nil && m.Done > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the merge shows no progress")
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("merge with a cancelled context: %v", err)
	}
	for deadline := time.Now().Add(time.Minute); f.status().Merge != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server still merges for a client that went away")
		}
	}
	if st := f.status(); st.Depth != 2 {
		t.Fatalf("depth %d after a cancelled merge", st.Depth)
	}
	if _, err := f.c.Merge(f.ctx(), f.dir, attach.MergeRequest{Parent: d[0], Child: d[1]}); err != nil {
		t.Fatalf("the merge asked again: %v", err)
	}
	if st := f.status(); st.Depth != 1 {
		t.Fatalf("depth %d after the merge", st.Depth)
	}
	f.detach()
	f.checkImage()
}
