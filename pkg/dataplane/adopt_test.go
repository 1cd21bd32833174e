package dataplane_test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// TestSupervisorRestartAdopts: the supervisor is stopped and started
// again while a writer runs: the serving process is not replaced (same
// pid, no pause), the new supervisor keeps it, and recovers it after a
// crash, which proves it holds the descriptors again.
func TestSupervisorRestartAdopts(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 128<<20)
	dev := p.attachImage(dir)
	w := writer(t, dev, 64<<20, false)
	pid := p.serverPID(dir)
	p.stop()
	time.Sleep(200 * time.Millisecond)
	if st, err := p.attach.Status(ctx(t), dir); err != nil || st.Kept || st.PID != pid {
		t.Fatalf("server without a supervisor: %+v %v", st, err)
	}
	p.start()
	if v, ok := p.volume(dir); !ok || v.PID != pid || v.State != "serving" {
		t.Fatalf("restarted supervisor's view: %+v %v\n%s", v, ok, p.log())
	}
	if !strings.Contains(p.log(), "adopted the serving process") {
		t.Fatalf("no adoption in the log:\n%s", p.log())
	}
	time.Sleep(600 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGKILL)
	next := p.waitServer(dir, pid)
	time.Sleep(200 * time.Millisecond)
	checkWriter(t, "writer across a supervisor restart and a kill", w.Stop())
	t.Logf("server %d adopted, killed, successor %d", pid, next)
}

// TestNewSupervisorTakesOver: a second supervisor (a newer DaemonSet pod
// beside the old one) retires the first, takes its socket and hands its
// volume over to a server of its own; the first one exits once it has no
// volume left. A writer sees no error.
func TestNewSupervisorTakesOver(t *testing.T) {
	p := newPlane(t, "--generation", "1")
	dir := p.image("img", 128<<20)
	dev := p.attachImage(dir)
	w := writer(t, dev, 64<<20, false)
	old, oldPID := p.proc, p.serverPID(dir)
	oldExited := p.exited
	p.start("--generation", "2") // p.proc is the new one now
	v, ok := p.volume(dir)
	if !ok || v.PID == oldPID || v.State != "serving" {
		t.Fatalf("new supervisor's view: %+v %v\n%s", v, ok, p.log())
	}
	select {
	case <-oldExited:
	case <-time.After(30 * time.Second):
		old.Process.Kill()
		t.Fatalf("the retired supervisor did not exit:\n%s", p.log())
	}
	time.Sleep(200 * time.Millisecond)
	checkWriter(t, "writer across the take-over", w.Stop())
}

// TestOlderSupervisorStaysIdle: a supervisor of an older generation (an
// old pod's container restarted during a rolling update) does not take the
// socket or the volumes back.
func TestOlderSupervisorStaysIdle(t *testing.T) {
	p := newPlane(t, "--generation", "5")
	dir := p.image("img", 64<<20)
	p.attachImage(dir)
	newer := p.proc
	p.proc = nil
	defer func() { p.proc = newer }()
	p.args = []string{"--generation", "4"}
	logf, _ := os.OpenFile(p.logPath, os.O_APPEND|os.O_WRONLY, 0)
	cmd := startBinary(t, logf, "dataplane", "run", "--socket", p.socket, "--run-dir", p.runDir, "--generation", "4")
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(time.Second)
	st, err := p.client.Status(ctx(t))
	if err != nil || st.PID != newer.Process.Pid || st.Generation != 5 || st.Retired {
		t.Fatalf("after an older supervisor started: %+v %v\n%s", st, err, p.log())
	}
}

// TestLegacyServerLeftAlone: a serving process of a release before the
// data plane (control protocol 1: no keep) is left serving, unsupervised;
// the supervisor is ready all the same.
func TestLegacyServerLeftAlone(t *testing.T) {
	p := newPlane(t)
	p.stop()
	rt := filepath.Join(p.runDir, "0123456789abcdef")
	if err := os.MkdirAll(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(rt, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var ops opLog
	go fakeV1Server(ln, &ops)
	p.start()
	if st, _ := p.client.Status(ctx(t)); len(st.Volumes) != 0 {
		t.Fatalf("a legacy server was taken: %+v", st)
	}
	if !strings.Contains(p.log(), "release before the data plane") {
		t.Fatalf("no note of the legacy server:\n%s", p.log())
	}
	if got := ops.list(); len(got) == 0 || slices.ContainsFunc(got, func(op string) bool { return op != "status" }) {
		t.Fatalf("the supervisor asked the legacy server %v (only status is fine)", got)
	}
}

type opLog struct {
	mu  sync.Mutex
	ops []string
}

func (l *opLog) add(op string) { l.mu.Lock(); l.ops = append(l.ops, op); l.mu.Unlock() }
func (l *opLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ops)
}

// fakeV1Server answers like a serving process of control protocol 1.
func fakeV1Server(ln net.Listener, ops *opLog) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		var req struct {
			Op string `json:"op"`
		}
		json.NewDecoder(c).Decode(&req)
		ops.add(req.Op)
		enc := json.NewEncoder(c)
		if req.Op == "status" {
			enc.Encode(map[string]any{"v": 1, "ok": true, "status": attach.Status{Device: "/dev/loop99", PID: 1, Dir: "/legacy"}})
		} else {
			enc.Encode(map[string]any{"v": 1, "ok": false, "code": "invalid", "error": `attach: invalid argument: unknown operation "` + req.Op + `"`})
		}
		c.Close()
	}
}

// TestInitRestartsTheSupervisor: with --init (a container's PID 1) the
// supervisor is a child that is started again when it dies; its serving
// processes, orphaned meanwhile, run on and are adopted by the new one.
func TestInitRestartsTheSupervisor(t *testing.T) {
	p := newPlane(t, "--init")
	dir := p.image("img", 128<<20)
	dev := p.attachImage(dir)
	w := writer(t, dev, 64<<20, false)
	st, err := p.client.Status(ctx(t))
	if err != nil || st.PID == p.proc.Process.Pid {
		t.Fatalf("supervisor %+v, init %d: %v", st, p.proc.Process.Pid, err)
	}
	server := p.serverPID(dir)
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		next, err := p.client.Status(ctx(t))
		if err == nil && next.Ready && next.PID != st.PID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new supervisor after the kill:\n%s", p.log())
		}
	}
	if v, ok := p.volume(dir); !ok || v.PID != server {
		t.Fatalf("new supervisor's view: %+v %v (server was %d)", v, ok, server)
	}
	time.Sleep(600 * time.Millisecond)
	syscall.Kill(server, syscall.SIGKILL)
	p.waitServer(dir, server)
	time.Sleep(200 * time.Millisecond)
	checkWriter(t, "writer across a supervisor crash and a server crash", w.Stop())
}
