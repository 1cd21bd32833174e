package attach_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// deltaSnapshot is what a check may change about a delta: its header (the
// in-use mark of a top that was not closed cleanly) and its length (leaked
// clusters that crash recovery trims).
type deltaSnapshot struct {
	header []byte
	size   int64
}

func snapshotDelta(t *testing.T, path string) deltaSnapshot {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return deltaSnapshot{header: b[:image.HeaderSize], size: int64(len(b))}
}

// killServer kills the serving process of f -9: its top delta stays marked
// in use (as after a crash) and its runtime directory stays behind.
func killServer(t *testing.T, f *fixture) {
	t.Helper()
	pid := f.status().PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
}

// TestCleanupProbesTheLockWithoutOpeningTheImage (issue 9 item 7): the
// cleanup after a dead server decides "nobody serves this image" without
// opening the image for writing, which would run crash recovery on the top
// delta (clear the in-use mark, trim leaked space) behind the back of
// whoever opens it next.
func TestCleanupProbesTheLockWithoutOpeningTheImage(t *testing.T) {
	f := newFixture(t, 64<<20)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	killServer(t, f)
	top := topDelta(t, f.dir)
	before := snapshotDelta(t, top)
	if err := f.c.Cleanup(f.ctx(), f.dir); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	after := snapshotDelta(t, top)
	if !bytes.Equal(before.header, after.header) || before.size != after.size {
		t.Fatalf("cleanup changed the top delta %s: header equal %v, size %d -> %d",
			top, bytes.Equal(before.header, after.header), before.size, after.size)
	}
	f.attach() // the serving process itself recovers the top
}

// TestCleanupRefusesAnUnreadableLock: a lock that cannot be probed is not
// taken for a free one (the probe used to read every failure to open the
// image as "not locked").
func TestCleanupRefusesAnUnreadableLock(t *testing.T) {
	f := newFixture(t, 64<<20)
	f.attach()
	killServer(t, f)
	lock := filepath.Join(f.dir, ".csi-ploop.lock")
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(lock, lock); err != nil { // a loop: open fails with ELOOP
		t.Fatal(err)
	}
	err := f.c.Cleanup(f.ctx(), f.dir)
	if err == nil || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("cleanup with an unreadable lock: %v, want an error about the lock", err)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Cleanup(f.ctx(), f.dir); err != nil {
		t.Fatalf("cleanup once the lock is readable: %v", err)
	}
}

// TestAttachedIsBusyWhileTheImageIsLocked: a process that holds the image
// lock without answering (a server still starting) makes Cleanup refuse
// with ErrLocked instead of removing its files under it.
func TestCleanupRefusesWhileLocked(t *testing.T) {
	f := newFixture(t, 64<<20)
	f.attach()
	killServer(t, f)
	img, err := image.OpenDir(f.dir, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := f.c.Cleanup(f.ctx(), f.dir); !errors.Is(err, attach.ErrLocked) {
		t.Fatalf("cleanup of a locked image: %v, want ErrLocked", err)
	}
}
