package dataplane

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// server is a serving process as its keeper sees it: the keep channel and,
// for a child of this supervisor, the process.
type server struct {
	ch     *unixsock.MsgConn
	events chan event // the messages from the server; the last has err set
	pid    int
	cmd    *exec.Cmd     // nil for a server this supervisor did not start
	reaped chan struct{} // closed when the child was reaped (nil if not a child)
	binary string
	since  time.Time // when it reported ready
}

// event is one message from a server, or the end of its channel (err).
type event struct {
	msg   attach.KeepMsg
	files []*os.File
	err   error
}

// errServerGone: the keep channel ended without a goodbye: the process is
// gone (its descriptors, the image lock among them, are released only when
// its last thread has exited).
var errServerGone = errors.New("dataplane: serving process gone")

// watch starts reading the server's keep channel into srv.events.
func (srv *server) watch() {
	srv.events = make(chan event, 4)
	go func() {
		for {
			var m attach.KeepMsg
			files, err := srv.ch.Recv(&m)
			if err != nil {
				srv.events <- event{err: fmt.Errorf("%w: %w", errServerGone, err)}
				close(srv.events)
				return
			}
			srv.events <- event{msg: m, files: files}
		}
	}()
}

// spawn starts a serving process for dir as our child with a keep channel,
// sends it start, and watches it.
func (s *Supervisor) spawn(dir, rt string, start attach.KeepMsg, files attach.KeepFiles) (*server, error) {
	ours, theirs, err := unixsock.MsgPair()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(rt, "serve.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		ours.Close()
		theirs.Close()
		return nil, fmt.Errorf("dataplane: log file: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.opts.Binary, append(s.opts.ServerArgs, "image", "attach", "--foreground=false",
		"--run-dir", s.opts.RunDir, "--keeper-fd", "3", dir)...)
	cmd.Args[0] = "csi-ploop" // the binary may be /proc/self/exe
	cmd.Env = append(os.Environ(), s.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{theirs}
	// Its own session: no signal meant for ours (a terminal's Ctrl-C)
	// reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("%w: %s: %w", attach.ErrStartFailed, s.opts.Binary, err)
	}
	srv := &server{ch: ours, pid: cmd.Process.Pid, cmd: cmd, reaped: make(chan struct{}), binary: s.binaryID}
	go func() { cmd.Wait(); close(srv.reaped) }()
	srv.watch()
	if err := ours.Send(start, files.List()...); err != nil {
		srv.kill()
		return nil, fmt.Errorf("%w: send start: %w", attach.ErrStartFailed, err)
	}
	return srv, nil
}

// kill stops a child that is not to serve (a failed start, a standby
// successor that is not needed), and waits for it.
func (srv *server) kill() {
	srv.ch.Close()
	if srv.cmd == nil {
		return
	}
	_ = srv.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-srv.reaped:
	case <-time.After(stopWait):
		_ = srv.cmd.Process.Kill()
		<-srv.reaped
	}
}

// stopWait bounds how long a stopped server may take to exit.
const stopWait = 30 * time.Second

// awaitGone waits until a server whose channel ended has been reaped (our
// children; for others the end of the channel is all there is), so that
// no thread of it still runs when a successor opens the image.
func (srv *server) awaitGone() {
	if srv.reaped == nil {
		return
	}
	select {
	case <-srv.reaped:
	case <-time.After(stopWait):
	}
}

// await reads the server's messages until one with an op in ops comes, the
// channel ends (errServerGone), or timeout. Other messages are logged and
// dropped.
func (v *volume) await(srv *server, timeout time.Duration, ops ...string) (event, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case ev, ok := <-srv.events:
			if !ok {
				return event{}, errServerGone
			}
			if ev.err != nil {
				return ev, ev.err
			}
			for _, op := range ops {
				if ev.msg.Op == op {
					return ev, nil
				}
			}
			v.unexpected(srv, ev)
		case <-t.C:
			return event{}, fmt.Errorf("dataplane: serving process %d: no %v within %v", srv.pid, ops, timeout)
		}
	}
}
