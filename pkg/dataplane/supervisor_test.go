package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// runSupervisor runs a supervisor in this process (no serving process is
// started by these tests: no root needed) until the test ends.
func runSupervisor(t *testing.T, dir string, gen int64, exitWhenRetired bool) (*Supervisor, <-chan struct{}) {
	t.Helper()
	s := New(Options{Socket: filepath.Join(dir, "dp.sock"), RunDir: filepath.Join(dir, "run"), Generation: gen,
		ExitWhenRetired: exitWhenRetired, ReadyFile: filepath.Join(dir, "ready"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		if err := s.Run(ctx); err != nil {
			t.Errorf("supervisor (generation %d): %v", gen, err)
		}
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s, done
}

func waitStatus(t *testing.T, c *Client, ok func(Status) bool) Status {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st, err := c.Status(context.Background())
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("status not reached: %+v %v", st, err)
		}
	}
}

// TestSupervisorTakeOverByGeneration: a newer supervisor retires the one on
// the socket and takes the socket; the retired one refuses new volumes and,
// being empty, exits; an older one leaves the newer alone.
func TestSupervisorTakeOverByGeneration(t *testing.T) {
	dir := t.TempDir()
	c := NewClient(filepath.Join(dir, "dp.sock"), time.Second)
	first, firstDone := runSupervisor(t, dir, 1, true)
	waitStatus(t, c, func(st Status) bool { return st.Ready && st.Generation == 1 })

	runSupervisor(t, dir, 2, false)
	waitStatus(t, c, func(st Status) bool { return st.Ready && st.Generation == 2 })
	select {
	case <-firstDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the retired supervisor, without volumes, did not exit")
	}
	if _, err := first.attachDir(context.Background(), "/some/image"); !errors.Is(err, ErrRetired) {
		t.Fatalf("attach on a retired supervisor: %v, want ErrRetired", err)
	}

	_, olderDone := runSupervisor(t, dir, 1, true) // a restarted old pod
	time.Sleep(300 * time.Millisecond)
	select {
	case <-olderDone:
		t.Fatal("the older supervisor returned")
	default:
	}
	if st := waitStatus(t, c, func(Status) bool { return true }); st.Generation != 2 || st.Retired {
		t.Fatalf("after an older supervisor started: %+v", st)
	}
}

// TestSupervisorProtocol: typed errors over the socket, a newer protocol
// version and bad requests are refused, and a client without a supervisor
// says so.
func TestSupervisorProtocol(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "dp.sock")
	c := NewClient(sock, 100*time.Millisecond)
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("no supervisor: %v, want ErrUnavailable", err)
	}
	if _, err := c.Launch(context.Background(), "/x"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("launch without a supervisor: %v, want ErrUnavailable", err)
	}
	runSupervisor(t, dir, 0, true)
	waitStatus(t, c, func(st Status) bool { return st.Ready })
	for _, req := range []request{{Op: "nonsense"}, {Op: opAttach, Dir: "relative"}, {Op: opAttach}} {
		req := req
		resp, err := call(context.Background(), sock, req)
		if err == nil || resp.Code != "invalid" {
			t.Errorf("%+v: answered %+v, %v; want code invalid", req, resp, err)
		}
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var resp response
	fmt.Fprintf(conn, `{"v":%d,"op":"status"}`+"\n", ProtocolVersion+1)
	if err := json.NewDecoder(conn).Decode(&resp); err != nil || resp.OK || resp.Code != "invalid" {
		t.Errorf("a request of a newer protocol: %+v %v; want code invalid", resp, err)
	}
	conn.Close()
	if _, err := c.Retire(context.Background(), -1); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("retire by an older generation: %v, want ErrSuperseded", err)
	}
}
