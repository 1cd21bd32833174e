package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// StartOptions configure Start.
type StartOptions struct {
	// Socket of the supervisor; "" = DefaultSocket.
	Socket string
	// RunArgs are the arguments of "dataplane run" (its flags, --socket
	// included).
	RunArgs []string
	// LogFile receives the supervisor's output; "" = dataplane.log beside
	// the socket.
	LogFile string
	// Binary to run; "" = /proc/self/exe.
	Binary string
}

// Start makes sure a supervisor serves on the socket: if one answers, it
// reports that one; otherwise it starts "BINARY dataplane run RUNARGS"
// detached (its own session, output to the log file; with --cgroup in
// RunArgs it also leaves our cgroup) and waits until it is ready. It
// returns the supervisor's pid and whether it was running already.
func Start(ctx context.Context, opts StartOptions) (pid int, running bool, err error) {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
	}
	if opts.LogFile == "" {
		opts.LogFile = filepath.Join(filepath.Dir(opts.Socket), "dataplane.log")
	}
	if opts.Binary == "" {
		opts.Binary = "/proc/self/exe"
	}
	c := NewClient(opts.Socket, 0)
	if st, err := c.Status(ctx); err == nil {
		return st.PID, true, nil
	} else if !errors.Is(err, ErrUnavailable) {
		return 0, false, err
	}
	if err := os.MkdirAll(filepath.Dir(opts.LogFile), 0o700); err != nil {
		return 0, false, fmt.Errorf("dataplane: log dir: %w", err)
	}
	logf, err := os.OpenFile(opts.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, false, fmt.Errorf("dataplane: log file: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(opts.Binary, append([]string{"dataplane", "run"}, opts.RunArgs...)...)
	cmd.Args[0] = "csi-ploop"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, false, fmt.Errorf("dataplane: start supervisor: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Ready && st.PID == cmd.Process.Pid {
			return st.PID, false, nil
		}
		select {
		case <-exited:
			return 0, false, fmt.Errorf("dataplane: the supervisor exited during its start; log %s: %s", opts.LogFile, attach.FileTail(opts.LogFile))
		case <-ctx.Done():
			return 0, false, fmt.Errorf("dataplane: the supervisor (pid %d) is not ready: %w; log %s", cmd.Process.Pid, ctx.Err(), opts.LogFile)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop makes the supervisor on socket exit and waits until it has; the
// serving processes keep running. No supervisor is not an error.
func Stop(ctx context.Context, socket string) (pid int, err error) {
	pid, err = NewClient(socket, 0).Stop(ctx)
	if errors.Is(err, ErrUnavailable) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	for alive(pid) {
		select {
		case <-ctx.Done():
			return pid, fmt.Errorf("dataplane: supervisor %d still runs: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return pid, nil
}

// alive reports whether process pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}
