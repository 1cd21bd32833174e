package attach_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// TestKilledServer: kill -9 of the serving process fails I/O quickly,
// Cleanup leaves nothing behind, and a re-attach finds the data flushed
// before the kill.
func TestKilledServer(t *testing.T) {
	f := newFixture(t, 512<<20)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	mp := f.mount(dev, "ext4")
	sum, err := writeRandom(filepath.Join(mp, "flushed"), 8<<20, 11)
	if err != nil {
		t.Fatal(err)
	}
	testhelp.Run(t, "sync")
	pid := f.status().PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)

	start := time.Now()
	if err := within(5*time.Second, func() error { return readDirect(dev) }); err == nil || errors.Is(err, errHung) {
		t.Fatalf("read from the device of a dead server: %v, want a quick error", err)
	} else {
		t.Logf("device read after kill: %v after %v", err, time.Since(start))
	}
	start = time.Now()
	err = within(5*time.Second, func() error {
		_, err := writeRandom(filepath.Join(mp, "after"), 1<<20, 12)
		return err
	})
	if err == nil || errors.Is(err, errHung) {
		t.Fatalf("fsynced write to the filesystem of a dead server: %v, want a quick error", err)
	}
	t.Logf("fs write after kill: %v after %v", err, time.Since(start))

	if _, err := f.c.Status(f.ctx(), f.dir); !errors.Is(err, attach.ErrNotAttached) {
		t.Fatalf("status of a dead server: %v, want ErrNotAttached", err)
	}
	unmountQuiet(mp)
	if err := f.c.Cleanup(f.ctx(), f.dir); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if leaks := leaksUnder(theSuite.runDir); leaks != "" {
		t.Fatalf("after cleanup:\n%s", leaks)
	}
	dev = f.attach()
	mp = f.mount(dev, "ext4")
	verifyFile(t, filepath.Join(mp, "flushed"), sum)
}

// TestAttachAfterDeadServer: Attach itself cleans up after a dead server.
func TestAttachAfterDeadServer(t *testing.T) {
	f := newFixture(t, 256<<20)
	f.attach()
	pid := f.status().PID
	syscall.Kill(pid, syscall.SIGKILL)
	waitGone(t, pid)
	dev := f.attach()
	if st := f.status(); st.Device != dev || st.PID == pid {
		t.Fatalf("re-attach: %+v", st)
	}
}

// TestSnapshotDirFallsBack: the CLI helper snapshots offline, and online
// through the server once the image is attached.
func TestSnapshotDirFallsBack(t *testing.T) {
	f := newFixture(t, 256<<20)
	if _, err := attach.SnapshotDir(f.ctx(), f.dir, theSuite.runDir, image.SnapshotOptions{}); err != nil {
		t.Fatalf("offline: %v", err)
	}
	f.attach()
	if _, err := attach.SnapshotDir(f.ctx(), f.dir, theSuite.runDir, image.SnapshotOptions{}); err != nil {
		t.Fatalf("online: %v", err)
	}
	if err := attach.GrowDir(f.ctx(), f.dir, theSuite.runDir, 512<<20); err != nil {
		t.Fatalf("online grow: %v", err)
	}
	if st := f.status(); st.Depth != 3 || st.Size != 512<<20 {
		t.Fatalf("status: %+v", st)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still there", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// within runs fn and fails with ErrDeadlineExceeded-like error if it hangs
// (the goroutine is then left behind: the point is to detect a hang).
func within(d time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return errHung
	}
}

var errHung = errors.New("I/O hung")

func readDirect(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for off := int64(0); off < 64<<20; off += 1 << 20 {
		if _, err := unix.Pread(fd, buf, off); err != nil {
			return err
		}
	}
	return nil
}

// TestKilledServerKeepsAcknowledgedWrites: allocating O_DIRECT writes the
// server acknowledged, never flushed, survive a kill -9 of a standalone
// server: Attach cleans up after it but keeps the image's journal, and the
// new server replays it (before it, the dirty-top recovery reclaimed
// those clusters and the writes read back as zeros). So does an offline
// snapshot or grow in between (attach.SnapshotDir, GrowDir: they replay
// the journal before their own recovery of the top).
func TestKilledServerKeepsAcknowledgedWrites(t *testing.T) {
	for _, between := range []string{"nothing", "offline snapshot", "offline grow", "check --repair", "merge"} {
		t.Run(between, func(t *testing.T) {
			f := newFixture(t, 256<<20)
			var guid string
			if between == "merge" { // the writes go to the delta above a snapshot
				var err error
				if guid, err = image.SnapshotDir(f.dir, image.SnapshotOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			blocks := writeAndKill(t, f)
			ctx := f.ctx()
			switch between {
			case "offline snapshot":
				if err := f.c.Cleanup(ctx, f.dir); err != nil {
					t.Fatal(err)
				}
				if _, err := attach.SnapshotDir(ctx, f.dir, theSuite.runDir, image.SnapshotOptions{}); err != nil {
					t.Fatal(err)
				}
			case "offline grow":
				if err := f.c.Cleanup(ctx, f.dir); err != nil {
					t.Fatal(err)
				}
				if err := attach.GrowDir(ctx, f.dir, theSuite.runDir, 512<<20); err != nil {
					t.Fatal(err)
				}
			case "check --repair":
				if err := f.c.Cleanup(ctx, f.dir); err != nil {
					t.Fatal(err)
				}
				testhelp.Run(t, theSuite.binary, "image", "check", "--repair", "--run-dir", theSuite.runDir, f.dir)
			case "merge":
				if err := f.c.Cleanup(ctx, f.dir); err != nil {
					t.Fatal(err)
				}
				testhelp.Run(t, theSuite.binary, "image", "merge", "--run-dir", theSuite.runDir, f.dir, guid)
			}
			dev := f.attach() // cleans up after the dead server first
			withDirect(t, dev, unix.O_RDONLY, func(fd int, buf []byte) {
				lost := 0
				for off, want := range blocks {
					if _, err := unix.Pread(fd, buf[:4096], off); err != nil {
						t.Fatalf("read at %d: %v", off, err)
					}
					if !bytes.Equal(buf[:4096], want) {
						lost++
					}
				}
				if lost > 0 {
					t.Fatalf("%d of %d acknowledged writes lost with the killed server", lost, len(blocks))
				}
			})
		})
	}
}

// writeAndKill attaches f, writes 4 KiB blocks into fresh clusters with
// O_DIRECT and no flush, and kills the server; it returns what it wrote.
func writeAndKill(t *testing.T, f *fixture) map[int64][]byte {
	t.Helper()
	dev := f.attach()
	blocks := make(map[int64][]byte)
	withDirect(t, dev, unix.O_RDWR, func(fd int, buf []byte) {
		for i := range int64(32) {
			off := i*(5<<20) + 4096 // a new cluster each (1 MiB clusters)
			copy(buf, randomBytes(4096, uint64(i)+1))
			if _, err := unix.Pwrite(fd, buf[:4096], off); err != nil {
				t.Fatalf("write at %d: %v", off, err)
			}
			blocks[off] = bytes.Clone(buf[:4096])
		}
	})
	pid := f.status().PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	return blocks
}

// withDirect opens dev with O_DIRECT and flags and hands fn an aligned
// 1 MiB buffer.
func withDirect(t *testing.T, dev string, flags int, fn func(fd int, buf []byte)) {
	t.Helper()
	fd, err := unix.Open(dev, flags|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	fn(fd, buf)
}
