//go:build linux

package loopdev

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseLoopName(t *testing.T) {
	for name, want := range map[string]int{"loop0": 0, "loop17": 17} {
		if n, ok := parseLoopName(name); !ok || n != want {
			t.Errorf("parseLoopName(%q) = %d, %t", name, n, ok)
		}
	}
	for _, name := range []string{"loop", "loop0p1", "loop-control", "loop01", "vda", "loop-1"} {
		if _, ok := parseLoopName(name); ok {
			t.Errorf("parseLoopName(%q) accepted", name)
		}
	}
}

func TestNewConfigTruncatesFileName(t *testing.T) {
	long := "/" + strings.Repeat("d", 100)
	cfg := newConfig(3, long, Options{DirectIO: true, ReadOnly: true, BlockSize: 4096})
	name := string(bytes.TrimRight(cfg.Info.File_name[:], "\x00"))
	if name != long[:63] || cfg.Info.File_name[63] != 0 {
		t.Errorf("File_name = %q, want the first 63 bytes and a NUL", name)
	}
	want := uint32(unix.LO_FLAGS_DIRECT_IO | unix.LO_FLAGS_READ_ONLY)
	if cfg.Fd != 3 || cfg.Size != 4096 || cfg.Info.Flags != want {
		t.Errorf("config = fd %d, block size %d, flags %#x", cfg.Fd, cfg.Size, cfg.Info.Flags)
	}
}

func TestAttachRejectsBadOptions(t *testing.T) {
	for _, opts := range []Options{{BlockSize: 1000}, {BlockSize: 256}, {RequireDirectIO: true}} {
		if _, err := Attach(context.Background(), "/nonexistent", opts); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Attach(%+v) = %v, want ErrInvalidOptions", opts, err)
		}
	}
}

func TestAttachHonoursCanceledContext(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	file := sparseFile(t, "", mib)
	if dev, err := Attach(ctx, file, Options{}); !errors.Is(err, context.Canceled) {
		detachOnCleanup(t, dev.Path)
		t.Fatalf("Attach with canceled ctx = %+v, %v", dev, err)
	}
}

// A kernel that answers EINVAL to LO_FLAGS_DIRECT_IO (instead of dropping it
// silently like 6.x) must lead to a buffered device reported as a fallback.
func TestDirectIOFallbackOnEINVAL(t *testing.T) {
	requireRoot(t)
	refuseDIO := func(fd int, cfg *unix.LoopConfig) error {
		if cfg.Info.Flags&unix.LO_FLAGS_DIRECT_IO != 0 {
			return unix.EINVAL
		}
		return unix.IoctlLoopConfigure(fd, cfg)
	}
	file := sparseFile(t, "", mib)
	info, err := attach(context.Background(), file, Options{DirectIO: true}, refuseDIO)
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, info.Path)
	if info.DirectIO || !info.DirectIOFallback {
		t.Errorf("info = %+v, want buffered with DirectIOFallback", info)
	}

	other := sparseFile(t, "", mib)
	_, err = attach(context.Background(), other, Options{DirectIO: true, RequireDirectIO: true}, refuseDIO)
	if !errors.Is(err, ErrDirectIOUnsupported) {
		t.Errorf("RequireDirectIO attach = %v, want ErrDirectIOUnsupported", err)
	}
	assertNotAttached(t, other)
}

// ramfs cannot do O_DIRECT at all: the real kernel path of the fallback.
func TestDirectIOFallbackOnRamfs(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "ramfs", 0, ""); err != nil {
		t.Skipf("cannot mount ramfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount ramfs: %v", err)
		}
	})
	file := sparseFile(t, dir, mib)
	info := attachT(t, file, Options{DirectIO: true})
	if info.DirectIO || !info.DirectIOFallback {
		t.Errorf("info on ramfs = %+v, want buffered with DirectIOFallback", info)
	}
	other := filepath.Join(dir, "other.img")
	if err := os.WriteFile(other, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Attach(context.Background(), other, Options{DirectIO: true, RequireDirectIO: true})
	if !errors.Is(err, ErrDirectIOUnsupported) {
		t.Errorf("RequireDirectIO on ramfs = %v, want ErrDirectIOUnsupported", err)
	}
	assertNotAttached(t, other)
}

// Losing the race for the offered device (EBUSY) must be retried, and a
// permanent EBUSY must end with ErrNoFreeDevice rather than spin forever.
func TestAttachRetriesBusyDevice(t *testing.T) {
	requireRoot(t)
	losses := 3
	loseThrice := func(fd int, cfg *unix.LoopConfig) error {
		if losses > 0 {
			losses--
			return unix.EBUSY
		}
		return unix.IoctlLoopConfigure(fd, cfg)
	}
	file := sparseFile(t, "", mib)
	info, err := attach(context.Background(), file, Options{}, loseThrice)
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, info.Path)
	if losses != 0 {
		t.Errorf("attach succeeded without retrying (%d losses left)", losses)
	}

	alwaysBusy := func(int, *unix.LoopConfig) error { return unix.EBUSY }
	_, err = attach(context.Background(), sparseFile(t, "", mib), Options{}, alwaysBusy)
	if !errors.Is(err, ErrNoFreeDevice) || !errors.Is(err, unix.EBUSY) {
		t.Errorf("attach with permanent EBUSY = %v, want ErrNoFreeDevice wrapping EBUSY", err)
	}
}

func assertNotAttached(t *testing.T, file string) {
	t.Helper()
	dev, ok, err := Find(file)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		detachOnCleanup(t, dev.Path)
		t.Errorf("%s left attached to %s after a failed Attach", file, dev.Path)
	}
}
