package unixsock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MsgConn carries JSON messages, one per line, over a unix stream
// connection, each with optional open files passed by SCM_RIGHTS. It is
// the one place where descriptors cross process boundaries: a serving
// process hands its FUSE connection to a keeper or a successor this way.
//
// A message and its files go out in one sendmsg, so the kernel attaches
// the files to the first byte of that message. A stream socket may return
// several messages in one read, but a read never goes past a message that
// carries files (the kernel stops after such a segment), and the files come
// with the first bytes of their message. So the files of a read belong to
// the last message that begins in it: that is how Recv assigns them.
//
// Send and Recv may be called concurrently with each other; concurrent
// Sends are serialised, as are concurrent Recvs.
type MsgConn struct {
	c *net.UnixConn

	wmu sync.Mutex

	rmu     sync.Mutex
	partial []byte     // the beginning of a message not yet complete
	pfiles  []*os.File // files of the partial message
	queue   []received // complete messages not yet returned
}

type received struct {
	line  []byte
	files []*os.File
}

// Limits of one message.
const (
	// MaxMsgFiles is the most files one message carries.
	MaxMsgFiles = 8
	// MaxMsgSize bounds one encoded message (a peer that sends more is
	// broken or hostile).
	MaxMsgSize = 1 << 20
)

// ErrMsgTooLarge: a peer sent a message longer than MaxMsgSize.
var ErrMsgTooLarge = errors.New("unixsock: message too large")

// NewMsgConn wraps c; the MsgConn owns it from now on.
func NewMsgConn(c *net.UnixConn) *MsgConn { return &MsgConn{c: c} }

// FileMsgConn makes a MsgConn of an inherited socket descriptor (a child's
// end of a socketpair). f is closed: the MsgConn holds its own descriptor.
func FileMsgConn(f *os.File) (*MsgConn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("unixsock: socket from descriptor %d: %w", f.Fd(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("unixsock: descriptor %d is not a unix socket", f.Fd())
	}
	return NewMsgConn(uc), nil
}

// MsgPair returns a connected pair: a MsgConn for this process and the
// other end as a file to hand to a child (exec.Cmd.ExtraFiles); close the
// file once the child has started.
func MsgPair() (*MsgConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("unixsock: socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "keep")
	m, err := FileMsgConn(ours)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return m, os.NewFile(uintptr(fds[1]), "keep-child"), nil
}

// Conn is the underlying connection (for deadlines and addresses).
func (m *MsgConn) Conn() *net.UnixConn { return m.c }

// SetDeadline sets the read and write deadlines of the connection.
func (m *MsgConn) SetDeadline(t time.Time) error { return m.c.SetDeadline(t) }

// Close closes the connection (a Recv blocked on it returns) and any file
// received but not returned.
func (m *MsgConn) Close() error {
	err := m.c.Close()
	m.rmu.Lock()
	for _, r := range m.queue {
		closeFiles(r.files)
	}
	closeFiles(m.pfiles)
	m.queue, m.pfiles = nil, nil
	m.rmu.Unlock()
	return err
}

// Send writes v as one message with files attached. The files stay open in
// this process (the peer gets its own descriptors).
func (m *MsgConn) Send(v any, files ...*os.File) error {
	if len(files) > MaxMsgFiles {
		return fmt.Errorf("unixsock: %d files in one message (at most %d)", len(files), MaxMsgFiles)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("unixsock: encode message: %w", err)
	}
	if len(b) > MaxMsgSize {
		return ErrMsgTooLarge
	}
	b = append(b, '\n')
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fd, err := rawFD(f)
			if err != nil {
				return err
			}
			fds[i] = fd
		}
		oob = unix.UnixRights(fds...)
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	n, _, err := m.c.WriteMsgUnix(b, oob, nil)
	for err == nil && n < len(b) { // the files went with the first bytes
		var k int
		k, err = m.c.Write(b[n:])
		n += k
	}
	if err != nil {
		return fmt.Errorf("unixsock: send: %w", err)
	}
	return nil
}

// rawFD is f's descriptor. Unlike f.Fd it leaves the descriptor's mode
// alone: Fd puts a socket from net's File methods into blocking mode, and
// O_NONBLOCK belongs to the open file description that every duplicate
// shares, so a listener passed on this way would block its own server's
// Accept for good (Close could not interrupt it).
func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("unixsock: %s: %w", f.Name(), err)
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return 0, fmt.Errorf("unixsock: %s: %w", f.Name(), err)
	}
	return fd, nil
}

// Recv reads the next message into v and returns the files that came with
// it (the caller owns them; close what you do not keep). At the end of the
// stream it returns an error matching io.EOF.
func (m *MsgConn) Recv(v any) ([]*os.File, error) {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	for len(m.queue) == 0 {
		if err := m.readChunk(); err != nil {
			return nil, err
		}
	}
	r := m.queue[0]
	m.queue = m.queue[1:]
	if err := json.Unmarshal(r.line, v); err != nil {
		closeFiles(r.files)
		return nil, fmt.Errorf("unixsock: decode message: %w", err)
	}
	return r.files, nil
}

// readChunk reads once from the socket and splits what came into messages.
func (m *MsgConn) readChunk() error {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(MaxMsgFiles*4))
	n, oobn, flags, _, err := m.c.ReadMsgUnix(buf, oob)
	files, ferr := parseRights(oob[:oobn])
	if flags&unix.MSG_CTRUNC != 0 && ferr == nil {
		ferr = fmt.Errorf("unixsock: more than %d files in one message", MaxMsgFiles)
	}
	if ferr != nil {
		closeFiles(files)
		return ferr
	}
	if n == 0 && err == nil {
		err = errors.New("unixsock: empty read")
	}
	if err != nil {
		closeFiles(files)
		return err // io.EOF at the end of the stream
	}
	m.split(buf[:n], files)
	if len(m.partial) > MaxMsgSize {
		return ErrMsgTooLarge
	}
	return nil
}

// split appends chunk to the message stream; files belong to the last
// message that begins in chunk (see MsgConn).
func (m *MsgConn) split(chunk []byte, files []*os.File) {
	// Where does the last message beginning in chunk start?
	owner := -1
	if len(m.partial) == 0 && len(chunk) > 0 {
		owner = 0
	}
	for i := 0; ; {
		j := bytes.IndexByte(chunk[i:], '\n')
		if j < 0 || i+j+1 >= len(chunk) {
			break
		}
		i += j + 1
		owner = i
	}
	if owner < 0 { // a continuation only: the kernel never does this with files
		m.pfiles = append(m.pfiles, files...)
		files = nil
	}
	start := 0
	for start < len(chunk) {
		if start == owner {
			m.pfiles = append(m.pfiles, files...)
		}
		end := bytes.IndexByte(chunk[start:], '\n')
		if end < 0 {
			m.partial = append(m.partial, chunk[start:]...)
			return
		}
		line := append(m.partial, chunk[start:start+end]...)
		m.queue = append(m.queue, received{line: line, files: m.pfiles})
		m.partial, m.pfiles = nil, nil
		start += end + 1
	}
}

// parseRights returns the files of the SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("unixsock: control message: %w", err)
	}
	var files []*os.File
	for _, cm := range msgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue // not SCM_RIGHTS
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("received-fd-%d", fd)))
		}
	}
	return files, nil
}

// CloseFiles closes files, ignoring nil entries (for callers dropping what
// Recv returned).
func CloseFiles(files []*os.File) { closeFiles(files) }

func closeFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
