package attach_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// TestServerNeverReportsALoopDeviceItLost: the loop device is released
// under a serving process (as when the kernel completes a detach that was
// deferred with autoclear) and its number goes to another file. The server
// must not hand that number out again: it tears down and answers "not
// attached", and the next Attach gets a device that really is this image's.
func TestServerNeverReportsALoopDeviceItLost(t *testing.T) {
	f := newFixture(t, 64<<20)
	dev := f.attach()
	pid := f.status().PID
	if err := loopdev.Detach(dev); err != nil {
		t.Fatalf("release %s under the server: %v", dev, err)
	}
	// Another file takes the freed number (the kernel hands out the lowest free one).
	other := filepath.Join(f.work, "other.raw")
	if err := os.WriteFile(other, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	thief, err := loopdev.Attach(f.ctx(), other, loopdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loopdev.Detach(thief.Path) })

	if _, err := f.c.Status(f.ctx(), f.dir); !errors.Is(err, attach.ErrNotAttached) {
		t.Fatalf("status after losing %s (now %s): %v, want ErrNotAttached", dev, thief.Path, err)
	}
	waitGone(t, pid)
	again := f.attach()
	info, err := loopdev.Status(again)
	if err != nil {
		t.Fatal(err)
	}
	if again == thief.Path || filepath.Base(info.BackingFile) != "disk" {
		t.Fatalf("re-attach returned %s backed by %s: another file's device", again, info.BackingFile)
	}
}
