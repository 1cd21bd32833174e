package blockmap

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
	"golang.org/x/sys/unix"
)

// attachLoop attaches a loop device with direct I/O to file (a server's
// FilePath). Its cleanup (detach) is registered after mountDisk's Close,
// so it runs before the FUSE unmount.
func attachLoop(t *testing.T, file string) string {
	t.Helper()
	info, err := loopdev.AttachInfo(context.Background(), file,
		loopdev.Options{DirectIO: true, RequireDirectIO: true, BlockSize: 4096})
	if err != nil {
		t.Fatalf("attach loop: %v", err)
	}
	t.Cleanup(func() {
		if err := loopdev.Detach(info.Path); err != nil {
			t.Errorf("detach %s: %v", info.Path, err)
		}
	})
	if !info.DirectIO {
		t.Errorf("%s runs without direct I/O", info.Path)
	}
	return info.Path
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// mountExt4 mounts dev and registers the unmount, which runs before the
// loop detach.
func mountExt4(t *testing.T, dev string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() { unmountFS(t, dir) })
	return dir
}

func unmountFS(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		t.Errorf("unmount %s: %v", dir, err) // EINVAL: already unmounted
	}
}

func TestLoopExt4RoundTrip(t *testing.T) {
	d := newFileDisk(t, 256*mib)
	s := mountDisk(t, d, Options{})
	dev := attachLoop(t, s.FilePath())

	run(t, "mkfs.ext4", "-q", "-F", dev)
	dir := mountExt4(t, dev)
	want := pattern(8*mib+123, 11)
	if err := os.WriteFile(filepath.Join(dir, "data"), want, 0o600); err != nil {
		t.Fatal(err)
	}
	unmountFS(t, dir) // flushes through loop and FUSE

	run(t, "fsck.ext4", "-fn", dev)
	dir = mountExt4(t, dev)
	got, err := os.ReadFile(filepath.Join(dir, "data"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file read back after remount differs (err %v)", err)
	}
}

func TestLoopDiscardReachesDisk(t *testing.T) {
	d := newFileDisk(t, 64*mib)
	s := mountDisk(t, d, Options{})
	dev := attachLoop(t, s.FilePath())
	if _, err := d.f.WriteAt(pattern(8*mib, 1), 0); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"-o", "1048576", "-l", "2097152", dev},       // PUNCH_HOLE
		{"-z", "-o", "4194304", "-l", "2097152", dev}, // ZERO_RANGE
	} {
		before := d.discards.Load()
		run(t, "blkdiscard", args...)
		if d.discards.Load() == before {
			t.Errorf("blkdiscard %v did not reach Disk.Discard", args)
		}
	}
	got := make([]byte, 8*mib)
	if _, err := d.f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 2*mib)
	if !bytes.Equal(got[mib:3*mib], zeros) || !bytes.Equal(got[4*mib:6*mib], zeros) {
		t.Error("discarded ranges are not zero in the backing file")
	}
	if !bytes.Equal(got[3*mib:4*mib], pattern(8*mib, 1)[3*mib:4*mib]) {
		t.Error("data between the discarded ranges changed")
	}
}

func TestLoopGrowWithSetCapacity(t *testing.T) {
	d := newFileDisk(t, 64*mib)
	s := mountDisk(t, d, Options{})
	dev := attachLoop(t, s.FilePath())

	d.grow(t, 160*mib)
	// Without Resized loop still sees the kernel's cached i_size: this is
	// why Resized exists.
	if err := loopdev.SetCapacity(dev); err != nil {
		t.Fatalf("SetCapacity: %v", err)
	}
	if size, err := loopdev.Size(dev); err != nil || size != 64*mib {
		t.Errorf("loop size before Resized = %d, %v; want the stale %d", size, err, 64*mib)
	}
	if err := s.Resized(); err != nil {
		t.Fatalf("Resized: %v", err)
	}
	if err := loopdev.SetCapacity(dev); err != nil {
		t.Fatalf("SetCapacity: %v", err)
	}
	size, err := loopdev.Size(dev)
	if err != nil || size != 160*mib {
		t.Fatalf("loop size after grow = %d, %v; want %d", size, err, 160*mib)
	}
}

// Close refuses while a loop device holds the file and keeps serving it.
func TestCloseWithLoopAttached(t *testing.T) {
	d := newFileDisk(t, 16*mib)
	s := mountDisk(t, d, Options{})
	dev := attachLoop(t, s.FilePath())

	if err := s.Close(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Close with loop attached: %v; want ErrBusy", err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := pattern(4096, 4)
	if _, err := f.WriteAt(want, 0); err != nil {
		t.Fatalf("write to loop after refused Close: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync loop: %v", err)
	}
	got := make([]byte, 4096)
	if _, err := d.f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("loop write did not reach the disk (err %v)", err)
	}
}
