package dataplane_test

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// TestSupervisedAttachDetach: the supervisor starts the server, keeps it
// (status shows it), and forgets it when the driver's detach tears it down.
func TestSupervisedAttachDetach(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 64<<20)
	dev := p.attachImage(dir)
	v, ok := p.volume(dir)
	if !ok || v.Device != dev || v.State != "serving" || !v.CanResend {
		t.Fatalf("supervisor's view after attach: %+v %v", v, ok)
	}
	if st, err := p.attach.Status(ctx(t), dir); err != nil || !st.Kept || st.PID != v.PID {
		t.Fatalf("server's status: %+v %v", st, err)
	}
	if again := p.attachImage(dir); again != dev {
		t.Fatalf("second attach: %s, want %s", again, dev)
	}
	w := writer(t, dev, 16<<20, false)
	time.Sleep(200 * time.Millisecond)
	checkWriter(t, "writer", w.Stop())
	if err := p.attach.Detach(ctx(t), dir); err != nil {
		t.Fatal(err)
	}
	p.waitForgotten(dir, "a detached volume")
}

// TestCrashRecovery: the serving process is killed (-9) five times under a
// verifying writer on the block device; each time a successor adopts the
// connection and the kernel re-sends what the dead one had taken: no I/O
// error, no wrong data.
func TestCrashRecovery(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 128<<20)
	dev := p.attachImage(dir)
	w := writer(t, dev, 64<<20, false)
	pid := p.serverPID(dir)
	for i := range 5 {
		// Longer than the restart policy's MinUptime: these are kills of
		// healthy servers, not a crash loop (which would be slowed down).
		time.Sleep(600 * time.Millisecond)
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		pid = p.waitServer(dir, pid)
		t.Logf("kill %d: successor %d serving after %v", i+1, pid, time.Since(killed))
	}
	time.Sleep(300 * time.Millisecond)
	checkWriter(t, "writer across 5 kills", w.Stop())
	if v, _ := p.volume(dir); v.Restarts != 5 {
		t.Errorf("restarts %d, want 5", v.Restarts)
	}
}

// TestHandover: five hand-overs to new serving processes under a verifying
// writer.
func TestHandover(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 128<<20)
	dev := p.attachImage(dir)
	w := writer(t, dev, 64<<20, false)
	pid := p.serverPID(dir)
	for i := range 5 {
		time.Sleep(200 * time.Millisecond)
		next, err := p.client.Handover(ctx(t), dir)
		if err != nil {
			t.Fatalf("hand-over %d: %v", i+1, err)
		}
		if next == pid || p.serverPID(dir) != next {
			t.Fatalf("hand-over %d: server %d, was %d, answers %d", i+1, next, pid, p.serverPID(dir))
		}
		pid = next
	}
	time.Sleep(200 * time.Millisecond)
	checkWriter(t, "writer across 5 hand-overs", w.Stop())
}

// TestDetachDuringHandover: the driver detaches a volume while the data
// plane hands it over. Whichever wins, nothing serves the volume
// afterwards: no successor starts on a detached volume, the image is not
// locked, the supervisor forgets it.
func TestDetachDuringHandover(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 64<<20)
	for i := range 6 {
		p.attachImage(dir)
		done := make(chan error, 1)
		go func() { _, err := p.client.Handover(ctx(t), dir); done <- err }()
		time.Sleep(time.Duration(i*4) * time.Millisecond)
		if err := p.attach.Detach(ctx(t), dir); err != nil {
			t.Fatalf("round %d: detach: %v", i, err)
		}
		err := <-done
		t.Logf("round %d: hand-over: %v", i, err)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			_, kept := p.volume(dir)
			_, serr := p.attach.Status(ctx(t), dir)
			locked, lerr := image.IsLocked(dir)
			if !kept && errors.Is(serr, attach.ErrNotAttached) && !locked && lerr == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: after detach: kept %v, status %v, locked %v %v", i, kept, serr, locked, lerr)
			}
		}
	}
}
