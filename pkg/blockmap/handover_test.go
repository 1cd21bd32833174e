package blockmap

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

const handOvers = 20

// handOver makes a successor adopt cur's connection and drains cur: what a
// live upgrade does, within one process.
func handOver(t *testing.T, cur *Server, disk Disk) *Server {
	t.Helper()
	c, err := cur.Conn()
	if err != nil {
		t.Fatalf("Conn: %v", err)
	}
	next, err := Serve(context.Background(), c, disk, Options{})
	if err != nil {
		t.Fatalf("Serve adopted: %v", err)
	}
	start := time.Now()
	if err := cur.Drain(context.Background()); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Logf("drain took %v", d)
	}
	cur.Wait() // returns after a drain
	if err := cur.Close(); err != nil {
		t.Fatalf("Close after Drain: %v", err)
	}
	return next
}

// serving tracks the server that currently serves, so that cleanup closes
// the last one after the loop device is gone (register it before
// attachLoop), and aborts the connection if the test fails, so that no
// cleanup waits for ever on a mount nobody serves (register after).
type serving struct{ cur *Server }

func (sv *serving) closeLast(t *testing.T) {
	t.Cleanup(func() {
		if err := sv.cur.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func abortOnFailure(t *testing.T, s *Server) {
	t.Cleanup(func() {
		if t.Failed() {
			s.Abort() //nolint:errcheck // best effort on a failed test
		}
	})
}

// A server hands over to a new one 20 times while verified writes and
// reads run through a loop device: no I/O error, every block intact.
func TestHandOverUnderLoad(t *testing.T) {
	d := newFileDisk(t, 64*mib)
	sv := &serving{cur: mountDisk(t, d, Options{})}
	sv.closeLast(t)
	dev := attachLoop(t, sv.cur.FilePath())
	abortOnFailure(t, sv.cur)
	io := startVerifiedIO(t, dev, 64*mib, 4)

	for range handOvers {
		io.waitWrites(t, 50)
		sv.cur = handOver(t, sv.cur, d)
	}
	io.waitWrites(t, 50)
	io.check(t, d.f.Name())
	if w := waitingRequests(t, sv.cur.connID); w != 0 {
		t.Errorf("waiting = %d after the I/O stopped", w)
	}
}

// Idle hand-overs: no request comes on its own, so Drain must wake its
// readers itself.
func TestHandOverIdle(t *testing.T) {
	d := newFileDisk(t, 16*mib)
	sv := &serving{cur: mountDisk(t, d, Options{})}
	sv.closeLast(t)
	abortOnFailure(t, sv.cur)
	for range handOvers {
		sv.cur = handOver(t, sv.cur, d)
	}
	f := openFile(t, sv.cur)
	want := pattern(8192, 3)
	if _, err := f.WriteAt(want, 4096); err != nil {
		t.Fatalf("write after hand-overs: %v", err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 4096); err != nil || string(got) != string(want) {
		t.Fatalf("read after hand-overs: %v", err)
	}
}

// The INIT state of a fresh start survives JSON, and a successor given
// only descriptors and that state (no mount path) serves, resizes and
// aborts through the root descriptor.
func TestAdoptWithJSONInitState(t *testing.T) {
	d := newFileDisk(t, 8*mib)
	a := mountDisk(t, d, Options{})
	f := openFile(t, a) // opened before, like a loop device

	c, err := a.Conn()
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(c.Init)
	if err != nil {
		t.Fatal(err)
	}
	var st fuse.InitState
	if err := json.Unmarshal(js, &st); err != nil || st != a.InitState() {
		t.Fatalf("InitState JSON %s round trip: %+v, %v", js, st, err)
	}
	c.Init, c.Dir = &st, "" // as another mount namespace would get it
	b, err := Serve(context.Background(), c, d, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.FilePath() != "" {
		t.Errorf("FilePath without a mount directory = %q", b.FilePath())
	}

	want := pattern(mib, 5)
	if _, err := f.WriteAt(want, 2*mib); err != nil {
		t.Fatalf("write through the successor: %v", err)
	}
	d.grow(t, 24*mib)
	if err := b.Resized(); err != nil {
		t.Fatalf("Resized through the root descriptor: %v", err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != 24*mib {
		t.Fatalf("size after Resized = %v, %v", st, err)
	}
	if err := b.Abort(); err != nil {
		t.Fatalf("Abort through the connection id: %v", err)
	}
	b.Wait()
	if err := b.Close(); err == nil {
		t.Error("Close without a mount directory succeeded")
	}
	// Nobody here unmounts for b (no mount directory) nor for a (it
	// handed over): tear down as the keeper would.
	b.conn.Close() //nolint:errcheck
	f.Close()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(a.conn.Dir, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
}

// waitingRequests reads the fusectl waiting counter of connection connID:
// requests the kernel has not seen answered.
func waitingRequests(t *testing.T, connID uint64) int {
	t.Helper()
	if err := mountFusectl(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(fusectlDir, strconv.FormatUint(connID, 10), "waiting"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("waiting %q: %v", b, err)
	}
	return n
}
