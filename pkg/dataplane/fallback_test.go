package dataplane_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ioFails waits until a direct read of dev fails (or d passes); it reports
// the error, and how long the read that failed had waited.
func ioFails(t *testing.T, dev string, d time.Duration) (error, time.Duration) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return err, 0
	}
	defer f.Close()
	buf := make([]byte, 8192)
	b := buf[4096-int(uintptrOf(buf)%4096):][:4096]
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		t0 := time.Now()
		if _, err := f.ReadAt(b, 0); err != nil {
			return err, time.Since(t0)
		}
	}
	return nil, 0
}

// TestCrashLoopEndsInEIO: the image cannot be opened any more (its top
// delta was moved away behind the server's back), so every successor of a
// killed server fails at once. After a few quick failures the keeper gives
// up: the FUSE connection is aborted and I/O fails with EIO instead of
// hanging, the supervisor says why, and the driver's cleanup removes the
// leftovers.
func TestCrashLoopEndsInEIO(t *testing.T) {
	p := newPlane(t, "--restart-max-failures", "3")
	dir := p.image("img", 64<<20)
	dev := p.attachImage(dir)
	top := filepath.Join(dir, "root.hds")
	if err := os.Rename(top, top+".away"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(top+".away", top) })
	if err := syscall.Kill(p.serverPID(dir), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err, waited := ioFails(t, dev, time.Minute)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("I/O after the give-up: %v, want EIO", err)
	}
	t.Logf("I/O failed with %v after waiting %v", err, waited)
	p.waitForgotten(dir, "a volume it gave up")
	if log := p.log(); !strings.Contains(log, "giving up on the volume") || !strings.Contains(log, "in a row") {
		t.Fatalf("the supervisor's log does not say why it gave up:\n%s", log)
	}
	if err := os.Rename(top+".away", top); err != nil {
		t.Fatal(err)
	}
	// The driver's detach of a volume without a server cleans up through
	// the supervisor (its FUSE mount is there).
	if err := p.attach.Detach(ctx(t), dir); err != nil {
		t.Fatalf("detach after the give-up: %v", err)
	}
}

// TestAbortOfAHungServer: the documented way out of a hung server (stopped
// here) is aborting its FUSE connection through fusectl: I/O fails instead
// of hanging, and the keeper does not bring the dead connection back.
func TestAbortOfAHungServer(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 64<<20)
	dev := p.attachImage(dir)
	pid := p.serverPID(dir)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	fuseConn := connOf(t, filepath.Join(p.runDir, filepath.Base(runtimeDirOf(t, p, dir)), "mnt"))
	go func() {
		time.Sleep(300 * time.Millisecond) // let the read below hang first
		os.WriteFile(filepath.Join("/sys/fs/fuse/connections", fuseConn, "abort"), []byte("1"), 0)
	}()
	err, waited := ioFails(t, dev, time.Minute)
	if err == nil {
		t.Fatal("I/O still works after the abort")
	}
	t.Logf("hung I/O failed with %v after %v", err, waited)
	syscall.Kill(pid, syscall.SIGCONT) // it finds its connection dead and says so
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := p.volume(dir); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the supervisor still keeps an aborted volume:\n%s", p.log())
		}
	}
	if err := p.attach.Detach(ctx(t), dir); err != nil {
		t.Fatalf("detach of the aborted volume: %v", err)
	}
}
