package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

// crashed handles the end of the current server's keep channel without a
// goodbye: the process died (kill -9, OOM, panic). Its successor adopts the
// connection we hold and has the kernel re-send what the dead one had
// taken; writers see a pause.
func (v *volume) crashed(srv *server) {
	srv.ch.Close()
	srv.awaitGone()
	v.cur = nil
	if v.files.Dev == nil {
		v.ended = true // never ready: nothing to keep
		return
	}
	uptime := time.Since(srv.since)
	if uptime >= v.s.opts.Restart.MinUptime {
		v.fails = 0
	}
	v.log.Warn("serving process died; starting a successor on the same FUSE connection", "pid", srv.pid, "uptime", uptime)
	v.restart()
}

// restart starts successors until one serves, or gives up (policy).
func (v *volume) restart() {
	for {
		v.fails++
		d := v.s.opts.Restart.decide(v.canResend(), v.fails)
		if d.GiveUp != "" {
			v.giveUp(d.GiveUp)
			return
		}
		if dead, err := attach.ConnectionEnded(v.files.Dev); dead || err != nil {
			v.log.Error("the FUSE connection has ended (aborted); nothing to restart", "err", err)
			v.letGo()
			return
		}
		v.setState("restarting")
		if d.Delay > 0 {
			select {
			case <-time.After(d.Delay):
			case <-v.s.stopping:
				return
			}
		}
		start := attach.KeepMsg{Op: attach.KeepStart, Mode: attach.ModeAdopt, Resend: true, State: &v.state}
		srv, err := v.s.spawn(v.dir, v.rt, start, v.files)
		if err == nil {
			var ev event
			ev, err = v.await(srv, v.s.opts.StartTimeout, attach.KeepReady, attach.KeepBye)
			if err == nil && ev.msg.Op == attach.KeepReady {
				v.serving(srv, ev)
				v.status.Restarts++
				v.log.Info("successor serving", "pid", srv.pid, "restarts", v.status.Restarts)
				return
			}
			if err == nil && ev.msg.Reason == attach.ByeAborted {
				v.log.Error("the successor found the FUSE connection ended", "err", ev.msg.Error)
				srv.kill()
				v.letGo()
				return
			}
			if err == nil {
				err = fmt.Errorf("%s: %s", ev.msg.Reason, ev.msg.Error)
			} else {
				err = fmt.Errorf("%w; log: %s", err, attach.LogTail(v.rt))
			}
			srv.kill()
		}
		v.log.Error("successor failed to start", "attempt", v.fails, "err", err)
	}
}

// canResend reports whether the volume's kernel re-sends the requests a
// dead server had taken (FUSE_NOTIFY_RESEND): decided from the INIT result
// the connection settled, which is what the kernel offered.
func (v *volume) canResend() bool {
	var st fuse.InitState
	if err := json.Unmarshal(v.state.Init, &st); err != nil {
		v.log.Error("unreadable INIT state; taking the kernel for one without FUSE_NOTIFY_RESEND", "err", err)
		return false
	}
	return st.CanResend()
}

// giveUp fails the volume for good: the FUSE connection is aborted, so that
// every request fails (EIO on the loop device) instead of waiting for a
// server that will not come; the driver attaches the volume again.
func (v *volume) giveUp(why string) {
	v.log.Error("giving up on the volume", "reason", why)
	if err := abortConnection(v.files.Root); err != nil {
		v.log.Error("aborting the FUSE connection failed", "err", err)
	}
	// Clients must find no server (not a listener nobody accepts on).
	os.Remove(v.ctlSocket())
	v.letGo()
}

// fusectlDir lists the FUSE connections (fusectl).
const fusectlDir = "/sys/fs/fuse/connections"

// abortConnection aborts the FUSE connection whose mount root is root
// through fusectl (mounting fusectl there if needed). It never asks the
// FUSE server anything (statx with AT_STATX_DONT_SYNC), so it works while
// there is no server.
func abortConnection(root *os.File) error {
	var st unix.Statx_t
	if err := unix.Statx(int(root.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); err != nil {
		return fmt.Errorf("dataplane: statx mount root: %w", err)
	}
	id := uint64(st.Dev_major)<<20 | uint64(st.Dev_minor)
	path := filepath.Join(fusectlDir, strconv.FormatUint(id, 10), "abort")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("dataplane: mount fusectl: %w", err)
		}
	}
	if err := os.WriteFile(path, []byte("1"), 0); err != nil {
		return fmt.Errorf("dataplane: abort FUSE connection %d: %w", id, err)
	}
	return nil
}
