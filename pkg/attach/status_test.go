package attach

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// hangUpServer listens on rt's control socket; each connection reads one
// request, then hangs up without an answer for the first `drop`
// connections and answers a status after that.
func hangUpServer(t *testing.T, rt string, drop int) net.Listener {
	t.Helper()
	if err := os.MkdirAll(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(rt, socketName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for n := 0; ; n++ {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			var req request
			json.NewDecoder(conn).Decode(&req)
			if n >= drop {
				json.NewEncoder(conn).Encode(response{Version: ProtocolVersion, OK: true,
					Status: &Status{Device: "/dev/loop-fake"}})
			}
			conn.Close()
		}
	}()
	return l
}

// A status question that loses its connection before an answer (a server
// that is dying, or busy closing) is asked again: a live server's answer
// counts, not the hang-up (the reconcile read a reset as a failure).
func TestStatusAsksAgainAfterAHangUp(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	hangUpServer(t, rt, 2)
	dev, ok, err := attachedAt(context.Background(), rt)
	if err != nil || !ok || dev != "/dev/loop-fake" {
		t.Fatalf("attachedAt = %q, %v, %v; want the live server's device", dev, ok, err)
	}
}

// A server that hangs up and then stops listening (it died; its socket
// file stays) is not attached, not an error.
func TestStatusOfAServerThatDiedIsNotAttached(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.MkdirAll(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(rt, socketName), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		var req request
		json.NewDecoder(conn).Decode(&req)
		l.Close() // gone before the hang-up is seen: the retry finds no listener
		conn.Close()
	}()
	_, ok, err := attachedAt(context.Background(), rt)
	if err != nil || ok {
		t.Fatalf("attachedAt = %v, %v; want not attached", ok, err)
	}
}

// A server that keeps hanging up is reported, not taken for gone.
func TestStatusGivesUpOnAServerThatAlwaysHangsUp(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	hangUpServer(t, rt, 1000)
	if _, ok, err := attachedAt(context.Background(), rt); err == nil || ok {
		t.Fatalf("attachedAt = %v, %v; want an error", ok, err)
	}
}
