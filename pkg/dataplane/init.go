package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Init runs the supervisor ("BINARY dataplane run ARGS") as a child and
// starts it again whenever it dies, until ctx ends or a SIGTERM/SIGINT
// comes (forwarded to the supervisor, which then exits). It also reaps
// every orphan: a serving process whose supervisor died is re-parented to
// the nearest subreaper, this process (or it is PID 1 of a container).
//
// In a container the main process is PID 1: when it dies, the container
// and every process in it die, every volume's serving process with them.
// With Init as PID 1, which does nothing that can fail, a crash of the
// supervisor costs only the supervisor: its successor adopts the serving
// processes, which never stopped.
func Init(ctx context.Context, binary string, args []string, log *slog.Logger) error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("dataplane: become a subreaper: %w", err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	backoff := time.Second
	for {
		began := time.Now()
		proc, err := os.StartProcess(binary, append([]string{"csi-ploop", "dataplane", "run"}, args...),
			&os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}})
		if err != nil {
			return fmt.Errorf("dataplane: start the supervisor: %w", err)
		}
		log.Info("supervisor started", "pid", proc.Pid)
		status, stopping := reapUntil(ctx, proc, sigs, log)
		proc.Release()
		if stopping {
			log.Info("supervisor stopped", "status", status)
			return nil
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		log.Error("supervisor died; starting it again (the serving processes run on and are adopted)",
			"status", status, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// reapUntil reaps every child that exits until the supervisor proc does;
// stopping reports whether that was asked for (ctx, a signal: forwarded).
func reapUntil(ctx context.Context, proc *os.Process, sigs <-chan os.Signal, log *slog.Logger) (string, bool) {
	stopping := false
	for {
		if status, done := reap(proc.Pid, log); done {
			return status, stopping
		}
		select {
		case s := <-sigs:
			if s == syscall.SIGCHLD {
				continue
			}
			stopping = true
			proc.Signal(s)
		case <-ctx.Done():
			if !stopping {
				stopping = true
				proc.Signal(syscall.SIGTERM)
			}
		case <-time.After(time.Second): // a SIGCHLD may have merged with another
		}
	}
}

// reap collects every exited child without blocking; done is set when one
// of them was the supervisor (pid).
func reap(pid int, log *slog.Logger) (status string, done bool) {
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if p <= 0 || err != nil {
			return status, done
		}
		if p == pid {
			status, done = describeWait(ws), true
		} else {
			log.Debug("reaped an orphan", "pid", p, "status", describeWait(ws))
		}
	}
}

func describeWait(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}
