//go:build linux

package loopdev

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const mib = 1 << 20

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
}

// sparseFile creates a sparse file in a fresh temp dir; t.TempDir removes it
// after the detach cleanups registered later (cleanups run last-in first-out).
func sparseFile(t *testing.T, dir string, size int64) string {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// attachT attaches and registers a detach that runs even if the test fails.
func attachT(t *testing.T, file string, opts Options) Info {
	t.Helper()
	info, err := AttachInfo(context.Background(), file, opts)
	if err != nil {
		t.Fatalf("AttachInfo(%s, %+v): %v", file, opts, err)
	}
	detachOnCleanup(t, info.Path)
	return info
}

func detachOnCleanup(t *testing.T, path string) {
	t.Cleanup(func() {
		if err := Detach(path); err != nil {
			t.Errorf("cleanup Detach(%s): %v", path, err)
		}
	})
}

// alignedBuf returns page-aligned memory, as O_DIRECT requires.
func alignedBuf(t *testing.T, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(b) })
	return b
}

func TestAttachDirectIOBlockSize4K(t *testing.T) {
	requireRoot(t)
	file := sparseFile(t, "", 64*mib)
	info := attachT(t, file, Options{DirectIO: true, BlockSize: 4096})
	if !info.DirectIO || info.DirectIOFallback {
		t.Errorf("DirectIO=%t fallback=%t, want dio on (backing fs is %s)", info.DirectIO, info.DirectIOFallback, file)
	}
	if info.BlockSize != 4096 || info.SizeBytes != 64*mib || info.ReadOnly {
		t.Errorf("info = %+v, want 4096-byte blocks, 64 MiB, read-write", info)
	}
	if info.BackingFile != file {
		t.Errorf("BackingFile = %q, want %q", info.BackingFile, file)
	}

	dev, err := os.OpenFile(info.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	st, err := unix.IoctlLoopGetStatus64(int(dev.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if name := string(bytes.TrimRight(st.File_name[:], "\x00")); !strings.HasPrefix(file, name) || name == "" {
		t.Errorf("lo_file_name = %q, want a prefix of %q", name, file)
	}
	const off = 5 * 4096
	want := alignedBuf(t, 8192)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	if _, err := dev.WriteAt(want, off); err != nil {
		t.Fatalf("O_DIRECT write: %v", err)
	}
	got := alignedBuf(t, 8192)
	if _, err := dev.ReadAt(got, off); err != nil {
		t.Fatalf("O_DIRECT read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data read through the device differs from data written")
	}
	// 512-byte I/O must be refused: the device really has 4 KiB blocks.
	if _, err := dev.WriteAt(want[:512], off); !errors.Is(err, unix.EINVAL) {
		t.Errorf("512-byte O_DIRECT write on 4K device: err = %v, want EINVAL", err)
	}
	// With direct I/O the data is in the file, not only in a page cache.
	onDisk := make([]byte, len(want))
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(onDisk, off); err != nil || !bytes.Equal(onDisk, want) {
		t.Errorf("backing file does not hold the written data (err %v)", err)
	}
}

func TestFindAndList(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	file := sparseFile(t, dir, 8*mib)
	if _, ok, err := Find(file); err != nil || ok {
		t.Fatalf("Find before attach = %t, %v; want not found", ok, err)
	}
	info := attachT(t, file, Options{})

	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link, filepath.Join(dir, ".", "x", "..", "disk.img")} {
		dev, ok, err := Find(p)
		if err != nil || !ok || dev != info.Device {
			t.Errorf("Find(%s) = %+v, %t, %v; want %+v", p, dev, ok, err, info.Device)
		}
	}

	infos, err := List()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, in := range infos {
		if in.Device == info.Device {
			found = true
			if in.BackingFile != file || in.SizeBytes != 8*mib || in.ReadOnly || in.DirectIO {
				t.Errorf("List entry = %+v", in)
			}
		}
	}
	if !found {
		t.Errorf("List() = %+v, missing %s", infos, info.Path)
	}
}

func TestFindReplacedAndDeletedFile(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	file := sparseFile(t, dir, 4*mib)
	info := attachT(t, file, Options{})

	// A new file renamed over the old path is a different inode.
	tmp := filepath.Join(dir, "new.img")
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	if dev, ok, err := Find(file); err != nil || ok {
		t.Errorf("Find(replaced file) = %+v, %t, %v; want not found", dev, ok, err)
	}

	// Once the path is gone, the orphaned device is found for cleanup.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	dev, ok, err := Find(file)
	if err != nil || !ok || dev != info.Device {
		t.Errorf("Find(deleted file) = %+v, %t, %v; want %+v", dev, ok, err, info.Device)
	}
	st, err := Status(info.Path)
	if err != nil || !st.BackingDeleted || st.BackingFile != file {
		t.Errorf("Status = %+v, %v; want deleted backing %s", st, err, file)
	}
}

func TestSetCapacityAfterGrow(t *testing.T) {
	requireRoot(t)
	file := sparseFile(t, "", 4*mib)
	info := attachT(t, file, Options{DirectIO: true})
	if err := os.Truncate(file, 12*mib); err != nil {
		t.Fatal(err)
	}
	if size, err := Size(info.Path); err != nil || size != 4*mib {
		t.Fatalf("Size before SetCapacity = %d, %v; want %d", size, err, 4*mib)
	}
	if err := SetCapacity(info.Path); err != nil {
		t.Fatal(err)
	}
	if size, err := Size(info.Path); err != nil || size != 12*mib {
		t.Errorf("Size after SetCapacity = %d, %v; want %d", size, err, 12*mib)
	}
	if st, err := Status(info.Path); err != nil || st.SizeBytes != 12*mib {
		t.Errorf("Status after SetCapacity = %+v, %v", st, err)
	}
}

func TestReadOnlyRejectsWrites(t *testing.T) {
	requireRoot(t)
	file := sparseFile(t, "", 4*mib)
	info := attachT(t, file, Options{ReadOnly: true})
	if !info.ReadOnly {
		t.Errorf("Info.ReadOnly = false")
	}
	// Kernels differ in where they refuse: at open or at write.
	ones := bytes.Repeat([]byte{0xff}, 4096)
	if f, err := os.OpenFile(info.Path, os.O_WRONLY|os.O_SYNC, 0); err == nil {
		_, werr := f.WriteAt(ones, 0)
		f.Close()
		if werr == nil {
			t.Errorf("write to read-only device %s succeeded", info.Path)
		}
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(got, ones[:16]) {
		t.Errorf("backing file of read-only device was modified")
	}
	if _, err := os.ReadFile(info.Path); err != nil {
		t.Errorf("reading read-only device: %v", err)
	}
}

func TestConcurrentAttachDistinctDevices(t *testing.T) {
	requireRoot(t)
	const n = 6
	files := make([]string, n)
	for i := range files {
		files[i] = sparseFile(t, "", mib)
	}
	devs := make([]Device, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { devs[i], errs[i] = Attach(context.Background(), files[i], Options{}) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("Attach(%s): %v", files[i], errs[i])
			continue
		}
		detachOnCleanup(t, devs[i].Path)
		if seen[devs[i].Path] {
			t.Errorf("device %s handed out twice", devs[i].Path)
		}
		seen[devs[i].Path] = true
		if dev, ok, err := Find(files[i]); err != nil || !ok || dev != devs[i] {
			t.Errorf("Find(%s) = %+v, %t, %v; want %+v", files[i], dev, ok, err, devs[i])
		}
	}
}

func TestDetachIdempotent(t *testing.T) {
	requireRoot(t)
	info := attachT(t, sparseFile(t, "", mib), Options{})
	for i := range 2 {
		if err := Detach(info.Path); err != nil {
			t.Fatalf("Detach #%d: %v", i+1, err)
		}
	}
	if _, err := Status(info.Path); !errors.Is(err, ErrNotAttached) && !errors.Is(err, ErrNotFound) {
		t.Errorf("Status after Detach: %v, want ErrNotAttached", err)
	}
	if err := SetCapacity(info.Path); !errors.Is(err, ErrNotAttached) && !errors.Is(err, ErrNotFound) {
		t.Errorf("SetCapacity on detached device: %v, want ErrNotAttached", err)
	}
	if err := Detach("/dev/loop-does-not-exist"); err != nil {
		t.Errorf("Detach(missing node) = %v, want nil", err)
	}
	if err := Detach("/dev/null"); !errors.Is(err, ErrNotLoopDevice) {
		t.Errorf("Detach(/dev/null) = %v, want ErrNotLoopDevice", err)
	}
}

func TestDetachBusyDefersToLastClose(t *testing.T) {
	requireRoot(t)
	info := attachT(t, sparseFile(t, "", mib), Options{})
	holder, err := os.Open(info.Path) // stands in for a mount
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := Detach(info.Path); !errors.Is(err, ErrBusy) {
		t.Fatalf("Detach of open device = %v, want ErrBusy", err)
	}
	if st, err := Status(info.Path); err != nil || !st.AutoClear {
		t.Errorf("Status of busy-detached device = %+v, %v; want autoclear", st, err)
	}
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Detach(info.Path); err != nil {
		t.Errorf("Detach after last close = %v", err)
	}
	if _, err := Status(info.Path); !errors.Is(err, ErrNotAttached) && !errors.Is(err, ErrNotFound) {
		t.Errorf("Status after last close: %v, want ErrNotAttached", err)
	}
}

func TestBacksComparesDeviceAndInode(t *testing.T) {
	requireRoot(t)
	backing := sparseFile(t, "", mib)
	d := attachT(t, backing, Options{})
	var st unix.Stat_t
	if err := unix.Stat(backing, &st); err != nil {
		t.Fatal(err)
	}
	if ok, err := Backs(d.Path, st.Dev, st.Ino); err != nil || !ok {
		t.Fatalf("Backs(own file) = %v, %v", ok, err)
	}
	if ok, err := Backs(d.Path, st.Dev, st.Ino+1); err != nil || ok {
		t.Fatalf("Backs(another inode) = %v, %v", ok, err)
	}
	if err := Detach(d.Path); err != nil {
		t.Fatal(err)
	}
	if ok, err := Backs(d.Path, st.Dev, st.Ino); err != nil || ok {
		t.Fatalf("Backs(detached) = %v, %v", ok, err)
	}
}
