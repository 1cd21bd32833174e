package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: FUSE mounts")
	}
}

// testConn is a mounted, initialised connection with its cleanup.
type testConn struct {
	dir  string
	dev  *os.File
	st   InitState
	root *os.File
	id   uint64
}

// mountInit mounts a test file system and answers INIT. Cleanup unmounts
// (aborting the connection first if the unmount is refused, so that a
// failing test never leaves a hung mount) and closes the descriptors.
func mountInit(t *testing.T, opts InitOptions) *testConn {
	t.Helper()
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	dev, err := Mount(dir, MountOptions{Name: "fusetest"})
	if err != nil {
		t.Fatal(err)
	}
	c := &testConn{dir: dir, dev: dev}
	t.Cleanup(func() { c.teardown(t) })
	if c.st, err = Init(dev, opts); err != nil {
		t.Fatalf("Init: %v", err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.root = os.NewFile(uintptr(fd), dir)
	return c
}

// abortOnFailure registers a cleanup that aborts the connection if the
// test failed. Register it after cleanups that touch the mount (closing a
// FUSE file sends FLUSH): cleanups run last in, first out, and with no
// server left those would wait for ever.
func (c *testConn) abortOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			c.abort()
		}
	})
}

// abort aborts the connection through fusectl, once its id is known.
func (c *testConn) abort() {
	if c.id != 0 {
		os.WriteFile(filepath.Join("/sys/fs/fuse/connections", strconv.FormatUint(c.id, 10), "abort"), []byte("1"), 0) //nolint:errcheck
	}
}

// open opens the file raw (no epoll) and closes it at cleanup, while a
// server still serves (closing sends FLUSH); the connection is aborted
// first if the test failed.
func (c *testConn) open(t *testing.T, flags int) int {
	t.Helper()
	fd, err := unix.Open(filepath.Join(c.dir, "disk"), flags|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	c.abortOnFailure(t)
	return fd
}

func (c *testConn) teardown(t *testing.T) {
	if c.root != nil {
		c.root.Close()
	}
	// A Drain's last wake may still be returning (it holds the mount
	// busy for that long).
	err := unix.Unmount(c.dir, 0)
	for deadline := time.Now().Add(2 * time.Second); errors.Is(err, unix.EBUSY) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		err = unix.Unmount(c.dir, 0)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		t.Errorf("unmount %s: %v (aborting the connection)", c.dir, err)
		c.abort()
		unix.Unmount(c.dir, unix.MNT_DETACH) //nolint:errcheck
	}
	c.dev.Close()
}

// serve starts a Server for f and learns the connection id.
func (c *testConn) serve(t *testing.T, f File) *Server {
	t.Helper()
	s, err := Serve(c.dev, c.st, Config{FileName: "disk", File: f, Readers: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if c.id == 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(c.root.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		c.id = ConnID(st.Dev)
		if err := DisablePoll(c.root, "disk"); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// wake statfs's the mount by path, not through c.root: a Drain's last
// wake may outlive the Drain and teardown closes c.root (a race).
func (c *testConn) wake() error {
	var st unix.Statfs_t
	return unix.Statfs(c.dir, &st)
}

func (c *testConn) waiting(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/fuse/connections", strconv.FormatUint(c.id, 10), "waiting"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func TestKernelServe(t *testing.T) {
	c := mountInit(t, InitOptions{})
	f := newMemFile(1 << 20)
	s := c.serve(t, f)

	c.abortOnFailure(t)
	path := filepath.Join(c.dir, "disk")
	want := bytes.Repeat([]byte("0123456789abcdef"), 8192) // 128 KiB
	if err := os.WriteFile(path, want, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("write with O_TRUNC: %v; want EINVAL (the size is the server's)", err)
	}
	wf, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wf.Write(want); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := wf.Close(); err != nil || f.flushCount() == 0 {
		t.Fatalf("close: %v, %d flushes", err, f.flushCount())
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got[:len(want)], want) || len(got) != 1<<20 {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	ents, err := os.ReadDir(c.dir)
	if err != nil || len(ents) != 1 || ents[0].Name() != "disk" {
		t.Errorf("readdir = %v, %v", ents, err)
	}
	var stx unix.Statx_t // asks for btime: STATX, answered ENOSYS, then GETATTR
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_FORCE_SYNC, unix.STATX_ALL, &stx); err != nil || stx.Size != 1<<20 {
		t.Errorf("statx = %v, size %d", err, stx.Size)
	}
	if _, err := unix.Getxattr(path, "user.x", make([]byte, 16)); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("getxattr: %v; want EOPNOTSUPP (ENOSYS from the server)", err)
	}
	if err := os.Mkdir(filepath.Join(c.dir, "d"), 0o700); err == nil {
		t.Error("mkdir succeeded")
	}

	// A grown file shows after InvalidateFile.
	f.grow(1 << 20)
	if err := s.InvalidateFile(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 2<<20 {
		t.Errorf("size after InvalidateFile: %v, %v", st, err)
	}

	c.root.Close() // an open descriptor keeps the mount busy
	c.root = nil
	if err := unix.Unmount(c.dir, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	<-s.Done()
	if !errors.Is(s.Err(), ErrConnEnded) {
		t.Errorf("Err after unmount = %v; want ErrConnEnded", s.Err())
	}
}

// A request read by a server that then died is re-delivered by RESEND,
// with bit 63 in its unique, and the reply with that unique completes it.
func TestKernelResendRecoversTakenRequest(t *testing.T) {
	c := mountInit(t, InitOptions{})
	f := newMemFile(1 << 20)
	copy(f.data[4096:], "taken, then re-sent")
	a := c.serve(t, f)
	fd := c.open(t, unix.O_RDONLY)
	if err := a.Drain(context.Background(), c.wake); err != nil {
		t.Fatal(err)
	}

	// Nobody serves now. A read comes, and a "server" reads it and dies
	// without answering.
	done := make(chan error, 1)
	buf := make([]byte, 19)
	go func() {
		_, err := unix.Pread(fd, buf, 4096)
		done <- err
	}()
	// Drain's last wakes may be queued too (the successor answers them):
	// take everything up to the READ.
	raw := alignedBuffer(c.st.MaxPayload() + pageSize)
	var taken Request
	for n := 1; taken.Header.Opcode != OpRead; n++ {
		m, err := unix.Read(int(c.dev.Fd()), raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := ParseRequest(raw[:m], &taken); err != nil {
			t.Fatal(err)
		}
		if w := c.waiting(t); w < n {
			t.Errorf("waiting = %d with %d requests taken", w, n)
		}
	}

	if err := Resend(c.dev, c.st); err != nil {
		t.Fatalf("Resend: %v", err)
	}
	rec := &recordingHandler{Handler: &Server{cfg: Config{FileName: "disk", File: f}, st: c.st, log: slog.New(slog.DiscardHandler)}}
	b, err := NewClassic(c.dev, c.st, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(rec); err != nil {
		t.Fatal(err)
	}
	// b serves until the teardown unmounts: closing fd needs a FLUSH answered.
	select {
	case err := <-done:
		if err != nil || string(buf) != "taken, then re-sent" {
			t.Fatalf("pread after RESEND = %q, %v", buf, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the taken request was not re-sent")
	}
	if u := rec.firstRead.Load(); u != taken.Header.Unique|UniqueResend {
		t.Errorf("re-sent unique %#x; want %#x", u, taken.Header.Unique|UniqueResend)
	}
	waitFor(t, "waiting 0", func() bool { return c.waiting(t) == 0 })
}

// recordingHandler remembers the unique of the first READ it answers.
type recordingHandler struct {
	Handler
	firstRead atomic.Uint64
}

func (r *recordingHandler) Handle(req *Request, rep *Reply) {
	if req.Header.Opcode == OpRead {
		r.firstRead.CompareAndSwap(0, req.Header.Unique)
	}
	r.Handler.Handle(req, rep)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Servers hand the connection over while a reader and a writer keep going:
// each old server drains (every reader returned) and no I/O fails.
func TestKernelDrainHandOver(t *testing.T) {
	c := mountInit(t, InitOptions{})
	f := newMemFile(1 << 20)
	cur := c.serve(t, f)
	fd := c.open(t, unix.O_RDWR)

	stop := make(chan struct{})
	ioErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-stop:
				ioErr <- nil
				return
			default:
			}
			off := int64(i%256) * 4096
			buf[0] = byte(i)
			if _, err := unix.Pwrite(fd, buf, off); err != nil {
				ioErr <- err
				return
			}
			n, err := unix.Pread(fd, buf, off)
			if err != nil || n != len(buf) || buf[0] != byte(i) {
				ioErr <- fmt.Errorf("iteration %d: read back %d bytes, first %d, err %v", i, n, buf[0], err)
				return
			}
		}
	}()
	for range 5 {
		next := c.serve(t, f)
		if err := cur.Drain(context.Background(), c.wake); err != nil {
			t.Fatalf("Drain: %v", err)
		}
		select {
		case <-cur.Done():
		default:
			t.Fatal("Done not closed after Drain")
		}
		if cl := cur.t.(*Classic); cl.alive != 0 || cur.Err() != nil {
			t.Fatalf("after Drain: %d readers alive, Err %v", cl.alive, cur.Err())
		}
		cur = next
	}
	close(stop)
	if err := <-ioErr; err != nil {
		t.Fatalf("I/O during hand-overs: %v", err)
	}
}

// A Drain whose wakes do not reach the readers gives up at ctx's end and
// the server keeps serving with all its readers.
func TestKernelDrainCanceled(t *testing.T) {
	c := mountInit(t, InitOptions{})
	s := c.serve(t, newMemFile(1<<20))
	// Let the requests of the start (RELEASE is sent in the background)
	// finish: a stray request would wake a reader, and this test wants
	// them all asleep.
	waitFor(t, "quiet connection", func() bool { return c.waiting(t) == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	noWake := func() error { time.Sleep(time.Millisecond); return nil }
	if err := s.Drain(ctx, noWake); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain = %v; want DeadlineExceeded", err)
	}
	select {
	case <-s.Done():
		t.Fatal("Done after a canceled Drain")
	default:
	}
	cl := s.t.(*Classic)
	waitFor(t, "all readers back", func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.alive == cl.readers
	})
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(c.root.Fd()), &st); err != nil || st.Blocks != 256 {
		t.Fatalf("statfs after canceled Drain: %v, %d blocks", err, st.Blocks)
	}
	if err := s.Drain(context.Background(), c.wake); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	// Wakes still queued (they keep the mount busy) are for a successor.
	c.serve(t, newMemFile(1<<20))
}
