package fuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultReaders is the number of classic reader goroutines: loop with
// direct I/O keeps up to max_background requests in flight, and each
// reader serves one at a time.
const DefaultReaders = 16

// Classic is the /dev/fuse transport: N reader goroutines, each reads a
// request, has it handled and writes the reply, then reads again.
//
// Each reader owns one page-aligned buffer and reads into it at the page
// offset minus the WRITE headers, so WRITE data lands page aligned; READ
// data is produced into the same buffer's aligned part and sent with
// writev. Nothing is allocated per request.
type Classic struct {
	fd      int // a private duplicate of the device
	bufSize int
	readers int
	log     *slog.Logger

	h        Handler
	draining atomic.Bool
	exited   chan struct{} // a token per reader exit, for Drain

	mu      sync.Mutex
	alive   int
	started bool
	err     error // why serving ended; set once
	done    chan struct{}
}

var _ Transport = (*Classic)(nil)

// NewClassic returns a classic transport on dev for a connection whose INIT
// settled st. readers <= 0 means DefaultReaders. The transport reads and
// writes its own duplicate of dev, closed when it stops: the caller may
// close dev at any time without a reader ever touching a descriptor
// number the process has reused for something else (another connection's
// INIT would be stolen).
func NewClassic(dev *os.File, st InitState, readers int, log *slog.Logger) (*Classic, error) {
	if readers <= 0 {
		readers = DefaultReaders
	}
	if log == nil {
		log = slog.Default()
	}
	fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fuse: dup /dev/fuse: %w", err)
	}
	return &Classic{
		fd:      fd,
		bufSize: pageSize + st.MaxPayload(),
		readers: readers,
		log:     log,
		exited:  make(chan struct{}, readers),
		done:    make(chan struct{}),
	}, nil
}

// Start implements Transport.
func (t *Classic) Start(h Handler) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started {
		return errors.New("fuse: transport already started")
	}
	t.started, t.h = true, h
	t.spawnLocked(t.readers)
	return nil
}

func (t *Classic) spawnLocked(n int) {
	for range n {
		t.alive++
		go t.reader()
	}
}

// Done implements Transport.
func (t *Classic) Done() <-chan struct{} { return t.done }

// Err implements Transport.
func (t *Classic) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// classicReader is one reader's memory: the request buffer (page aligned,
// one page of header room plus the largest payload), the parsed request,
// the reply and the writev vector.
type classicReader struct {
	buf []byte
	req Request
	rep Reply
	iov [2]unix.Iovec
}

func (t *Classic) reader() {
	buf, err := residentBuffer(t.bufSize)
	if err != nil {
		t.readerExit(err)
		return
	}
	defer unix.Munmap(buf) //nolint:errcheck // nothing to do about it
	r := &classicReader{buf: buf}
	r.rep.Buf = r.buf[pageSize:]
	in := r.buf[pageSize-WriteHeaderSize:]
	for !t.draining.Load() {
		n, err := t.read(in)
		if err != nil {
			t.readerExit(err)
			return
		}
		t.serveOne(r, in[:n])
	}
	t.readerExit(nil)
}

// read returns the next request, or the reason to stop reading.
func (t *Classic) read(p []byte) (int, error) {
	for {
		n, err := unix.Read(t.fd, p)
		switch err {
		case nil:
			return n, nil
		case unix.EINTR, unix.ENOENT:
			// ENOENT: the request went away while being copied.
		case unix.EAGAIN:
			// Someone set O_NONBLOCK on the shared open file
			// description: wait for a request instead of spinning.
			fds := []unix.PollFd{{Fd: int32(t.fd), Events: unix.POLLIN}}
			unix.Poll(fds, 100) //nolint:errcheck // the read tells
		case unix.ENODEV, unix.ECONNABORTED:
			return 0, ErrConnEnded
		default:
			return 0, fmt.Errorf("fuse: read /dev/fuse: %w", err)
		}
	}
}

// serveOne parses, handles and answers one request.
func (t *Classic) serveOne(r *classicReader, msg []byte) {
	head, data, ok := answer(t.h, msg, &r.req, &r.rep)
	if !ok {
		return
	}
	if err := t.write(r, head, data); err != nil {
		t.log.Warn("fuse: reply not taken", "unique", r.req.Header.Unique,
			"opcode", r.req.Header.Opcode, "err", err)
	}
}

// answer parses msg (what one read returned) into req, has h answer it
// into rep and returns the reply to send; ok is false when there is none
// (FORGET, or a message too short to hold a unique to answer with).
func answer(h Handler, msg []byte, req *Request, rep *Reply) (head, data []byte, ok bool) {
	err := ParseRequest(msg, req)
	rep.reset(req.Header.Unique)
	if err != nil {
		h.Malformed(req, err, rep)
		if len(msg) < 16 {
			return nil, nil, false
		}
	} else {
		h.Handle(req, rep)
	}
	return rep.Wire()
}

// write sends a reply. ENOENT means the kernel no longer waits for it
// (interrupted, aborted, or re-queued by a RESEND): nothing to do.
func (t *Classic) write(r *classicReader, head, data []byte) error {
	for {
		var err error
		if len(data) == 0 {
			_, err = unix.Write(t.fd, head)
		} else {
			r.iov[0].Base, r.iov[0].Len = unsafe.SliceData(head), uint64(len(head))
			r.iov[1].Base, r.iov[1].Len = unsafe.SliceData(data), uint64(len(data))
			_, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(t.fd), uintptr(unsafe.Pointer(&r.iov[0])), 2)
			if e != 0 {
				err = e
			}
		}
		switch err {
		case unix.EINTR:
			continue
		case nil, unix.ENOENT, unix.ENODEV, unix.ECONNABORTED:
			return nil // ended connections are noticed by the next read
		}
		return err
	}
}

// residentBuffer maps a page-aligned buffer whose pages are present and,
// if the limits allow, locked (MAP_POPULATE, MAP_LOCKED: one system call,
// much faster than faulting the pages in one by one). The kernel copies a
// request into the reader's buffer inside read(2); if the process is being
// killed (SIGKILL of a server that a keeper replaces) and that copy faults
// on a page not present, the fault is refused and the kernel ends the
// request with EIO, which the loop device passes up. A request whose copy
// succeeds stays with the connection and FUSE_NOTIFY_RESEND brings it back.
func residentBuffer(n int) ([]byte, error) {
	const flags = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_POPULATE
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, flags|unix.MAP_LOCKED)
	if err != nil { // RLIMIT_MEMLOCK without CAP_IPC_LOCK: present, not locked
		b, err = unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, flags)
	}
	if err != nil {
		return nil, fmt.Errorf("fuse: reader buffer: %w", err)
	}
	return b, nil
}

// readerExit accounts for a reader that returned; why is nil for a
// drained reader.
func (t *Classic) readerExit(why error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.alive--
	if why == nil && !t.draining.Load() {
		// It saw a Drain that was cancelled since: keep the count.
		t.spawnLocked(1)
		return
	}
	if why != nil && t.err == nil {
		t.err = why
		if !errors.Is(why, ErrConnEnded) {
			t.log.Error("fuse: reader stopped", "err", why)
		}
	}
	select {
	case t.exited <- struct{}{}:
	default:
	}
	if t.alive == 0 && (t.draining.Load() || t.err != nil) {
		t.stopLocked()
	}
}

// stopLocked ends the transport once no reader is left.
func (t *Classic) stopLocked() {
	unix.Close(t.fd)
	close(t.done)
}

// wakeBackoff paces Drain when wake fails.
const wakeBackoff = time.Millisecond

// Drain implements Transport.
func (t *Classic) Drain(ctx context.Context, wake func() error) error {
	t.mu.Lock()
	if !t.started {
		t.mu.Unlock()
		return errors.New("fuse: drain of a transport that was not started")
	}
	t.draining.Store(true)
	if t.alive == 0 {
		select {
		case <-t.done:
		default:
			t.stopLocked()
		}
	}
	t.mu.Unlock()

	var inflight atomic.Int32
	wakeDone := make(chan error, t.readers)
	for {
		select {
		case <-t.done:
			return t.drainResult()
		default:
		}
		// Every reader asleep in read(2) needs a request of its own. One
		// wake at a time: the kernel wakes the longest-sleeping reader
		// first, which is ours rather than a successor's, and a wake left
		// in flight when Drain returns would wait for the successor (and
		// keep the mount busy meanwhile).
		if inflight.Load() == 0 {
			inflight.Add(1)
			go func() {
				err := wake()
				inflight.Add(-1)
				wakeDone <- err
			}()
		}
		select {
		case <-t.done:
			return t.drainResult()
		case <-t.exited:
		case err := <-wakeDone:
			if err != nil {
				t.log.Warn("fuse: drain wake failed", "err", err)
				time.Sleep(wakeBackoff)
			}
		case <-ctx.Done():
			if t.resume() {
				return ctx.Err()
			}
			return t.drainResult()
		}
	}
}

// drainResult is Drain's answer once every reader has returned.
func (t *Classic) drainResult() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// resume undoes a Drain that ran out of time: readers that returned are
// started again. It reports false if there is nothing to resume (every
// reader already returned, or the connection ended).
func (t *Classic) resume() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.done:
		return false
	default:
	}
	t.draining.Store(false)
	if t.err == nil {
		// Readers between their last reply and readerExit respawn
		// themselves (they see draining false under t.mu).
		t.spawnLocked(t.readers - t.alive)
	}
	return true
}
