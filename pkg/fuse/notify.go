package fuse

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrResendUnsupported: the kernel predates FUSE_NOTIFY_RESEND (Linux 6.9,
// protocol 7.40). Requests a dead server had taken then stay unanswered;
// the only way out is aborting the connection.
var ErrResendUnsupported = errors.New("fuse: kernel has no FUSE_NOTIFY_RESEND (needs Linux 6.9, protocol 7.40)")

// writeNotify sends one notification: an out header with unique 0 and the
// notification code in the error field, then its argument.
func writeNotify(dev *os.File, code int32, arg []byte) error {
	var b [OutHeaderSize + invalInodeSize]byte
	n := OutHeaderSize + len(arg)
	putOutHeader(b[:], uint32(n), code, 0)
	copy(b[OutHeaderSize:], arg)
	for {
		_, err := unix.Write(int(dev.Fd()), b[:n])
		if err != unix.EINTR {
			return err
		}
	}
}

// InvalidateInode drops the kernel's cached attributes of node (off < 0)
// or also the cached data in [off, off+length) (length 0: to the end).
// It returns an error matching unix.ENOENT when the kernel holds no inode
// for node, i.e. nothing was cached.
func InvalidateInode(dev *os.File, node uint64, off, length int64) error {
	var arg [invalInodeSize]byte
	le.PutUint64(arg[0:], node)
	le.PutUint64(arg[8:], uint64(off))
	le.PutUint64(arg[16:], uint64(length))
	if err := writeNotify(dev, NotifyInvalInode, arg[:]); err != nil {
		return fmt.Errorf("fuse: invalidate inode %d: %w", node, err)
	}
	return nil
}

// Resend asks the kernel to queue again every request that was read from
// the connection and not answered, marked with UniqueResend, ahead of new
// ones. A server adopting a connection after its predecessor died sends it
// before serving. While another server is alive and serving, its requests
// in flight are re-queued too and would run twice: hand-overs drain
// instead.
func Resend(dev *os.File, st InitState) error {
	if !st.CanResend() {
		return ErrResendUnsupported
	}
	if err := writeNotify(dev, NotifyResend, nil); err != nil {
		return fmt.Errorf("fuse: notify resend: %w", err)
	}
	return nil
}

// DisablePoll makes the kernel stop forwarding poll(2) on the file to the
// server (it answers FUSE_POLL with ENOSYS, and the kernel remembers that
// for the connection's life). Call it once per connection, after INIT and
// with the server serving, before anything in the serving process opens
// the file through package os.
//
// Why: Go registers every file package os opens with its epoll through a
// raw epoll_ctl that the scheduler does not count as a blocking system
// call. On a FUSE file that call sends FUSE_POLL and waits for the answer;
// if a garbage collection stops the world meanwhile, it waits for that
// goroutine, while the reader holding the POLL request waits for the world
// to restart: the process deadlocks, and so does every user of the mount.
// Here the poll goes through poll(2), an ordinary system call.
func DisablePoll(root *os.File, name string) error {
	fd, err := unix.Openat(int(root.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fuse: open %s to disable poll: %w", name, err)
	}
	_, perr := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	cerr := unix.Close(fd)
	if perr != nil {
		return fmt.Errorf("fuse: poll %s: %w", name, perr)
	}
	if cerr != nil {
		return fmt.Errorf("fuse: close %s: %w", name, cerr)
	}
	return nil
}
