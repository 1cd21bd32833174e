package blockmap

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const mib = 1 << 20

func TestReadWriteFsync(t *testing.T) {
	d := newFileDisk(t, 64*mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s)

	want := pattern(3*mib+4096, 7) // spans several 1 MiB requests
	if _, err := f.WriteAt(want, 5*mib); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 5*mib); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from written data")
	}
	before := d.flushes.Load()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if d.flushes.Load() == before {
		t.Error("fsync did not reach Disk.Flush")
	}
	// The data really is in the backing file.
	direct := make([]byte, len(want))
	if _, err := d.f.ReadAt(direct, 5*mib); err != nil || !bytes.Equal(direct, want) {
		t.Errorf("backing file differs (err %v)", err)
	}
	st, err := os.Stat(s.FilePath())
	if err != nil || st.Size() != 64*mib || !st.Mode().IsRegular() {
		t.Errorf("stat = %v, %v; want regular file of %d bytes", st, err, 64*mib)
	}
}

func TestEndOfFile(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{FileName: "vol"})
	f := openFile(t, s)

	buf := make([]byte, 8192)
	n, err := f.ReadAt(buf, mib-100)
	if n != 100 || !errors.Is(err, io.EOF) {
		t.Errorf("read across EOF = %d, %v; want 100, EOF", n, err)
	}
	if n, err := f.ReadAt(buf, 2*mib); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("read past EOF = %d, %v; want 0, EOF", n, err)
	}
	if _, err := f.WriteAt(buf, 2*mib); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("write past EOF: %v; want ENOSPC", err)
	}
	if err := f.Truncate(2 * mib); !errors.Is(err, unix.EINVAL) {
		t.Errorf("truncate: %v; want EINVAL", err)
	}
}

func TestFallocate(t *testing.T) {
	d := newFileDisk(t, 16*mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s)
	fd := int(f.Fd())
	data := pattern(4*mib, 1)
	zeros := make([]byte, mib)

	cases := []struct {
		name string
		mode uint32
	}{
		{"punch", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE}, // 0x3, blkdiscard
		{"zero", unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE},  // 0x11, blkdiscard -z
		{"zero-nokeep", unix.FALLOC_FL_ZERO_RANGE},                      // within size: fine
	}
	for _, c := range cases {
		if _, err := f.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		before := d.discards.Load()
		if err := unix.Fallocate(fd, c.mode, mib, mib); err != nil {
			t.Fatalf("%s: fallocate: %v", c.name, err)
		}
		if d.discards.Load() == before {
			t.Errorf("%s: did not reach Disk.Discard", c.name)
		}
		got := make([]byte, 4*mib)
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[mib:2*mib], zeros) {
			t.Errorf("%s: range does not read back as zeros", c.name)
		}
		if !bytes.Equal(got[:mib], data[:mib]) || !bytes.Equal(got[2*mib:], data[2*mib:]) {
			t.Errorf("%s: data outside the range changed", c.name)
		}
	}

	// Preallocation is a no-op success; growing is refused, never with
	// EOPNOTSUPP (the kernel would stop sending fallocate for good).
	if err := unix.Fallocate(fd, 0, 0, mib); err != nil {
		t.Errorf("plain fallocate: %v", err)
	}
	if err := unix.Fallocate(fd, 0, 15*mib, 2*mib); !errors.Is(err, unix.EFBIG) {
		t.Errorf("growing fallocate: %v; want EFBIG", err)
	}
	// Punch across the end is clipped to the size.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 15*mib, 4*mib); err != nil {
		t.Errorf("punch across EOF: %v", err)
	}
	// After all that, discard still works: nothing was latched off.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
		t.Errorf("punch after errors: %v", err)
	}
}

func TestResized(t *testing.T) {
	d := newFileDisk(t, 8*mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s) // opened before the grow, like a loop device

	d.grow(t, 24*mib)
	if err := s.Resized(); err != nil {
		t.Fatalf("Resized: %v", err)
	}
	st, err := f.Stat()
	if err != nil || st.Size() != 24*mib {
		t.Fatalf("fstat after Resized = %v, %v; want %d", st, err, 24*mib)
	}
	want := pattern(mib, 3)
	if _, err := f.WriteAt(want, 20*mib); err != nil {
		t.Fatalf("write in grown area: %v", err)
	}
	got := make([]byte, mib)
	if _, err := f.ReadAt(got, 20*mib); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read in grown area: %v", err)
	}
}

func TestCloseBusy(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{})
	f, err := os.OpenFile(s.FilePath(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if err := s.Close(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Close with open file: %v; want ErrBusy", err)
	}
	// Still serving: the holder keeps working.
	if _, err := f.WriteAt([]byte("still here"), 0); err != nil {
		t.Fatalf("write after refused Close: %v", err)
	}
	f.Close()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.Wait()
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestAbort(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s)

	if err := s.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	s.Wait()
	if _, err := f.ReadAt(make([]byte, 4096), 0); !errors.Is(err, unix.ENOTCONN) {
		t.Errorf("read after Abort: %v; want ENOTCONN", err)
	}
}

// A Disk call that never returns must not hang I/O for ever: the watchdog
// aborts the connection and the caller gets an error.
func TestWatchdogAbortsStuckDisk(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{RequestTimeout: 200 * time.Millisecond})
	f := openFile(t, s)
	_, release := d.blockWritesAt(t, 4096)

	if _, err := f.WriteAt(make([]byte, 4096), 4096); err == nil {
		t.Fatal("write to a stuck disk succeeded")
	}
	release() // Serve waits for its handler goroutines to return
	s.Wait()
}

func TestInvalidFileName(t *testing.T) {
	for _, name := range []string{"a/b", ".", ".."} {
		_, err := Mount(t.Context(), t.TempDir(), nil, Options{FileName: name})
		if !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("FileName %q: %v; want ErrInvalidOptions", name, err)
		}
	}
}
