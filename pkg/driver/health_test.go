package driver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHealthz runs the driver with a health address and checks that /healthz
// follows the Probe RPC answered over the CSI socket.
func TestHealthz(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	addr := freeTCPAddr(t)
	var probeErr atomic.Pointer[error]
	d, err := New(Config{Endpoint: "unix://" + sock, NodeID: "n", DriverName: "ploop.csi.dev", HealthAddress: addr,
		Probe: func(context.Context) error {
			if p := probeErr.Load(); p != nil {
				return *p
			}
			return nil
		}}, &fakeDomain{})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(sctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()

	// get polls until the server answers with want (or 10 s pass).
	get := func(want int) (int, string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get("http://" + addr + "/healthz")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == want || time.Now().After(deadline) {
					return resp.StatusCode, string(body)
				}
			} else if time.Now().After(deadline) {
				t.Fatalf("GET /healthz: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if code, body := get(http.StatusOK); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("healthy: %d %q", code, body)
	}
	bad := errors.New("loop devices unavailable")
	probeErr.Store(&bad)
	if code, body := get(http.StatusServiceUnavailable); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, "loop devices unavailable") {
		t.Fatalf("unhealthy: %d %q", code, body)
	}
}

// TestHealthzWithoutDriver: nothing listening on the CSI socket is unhealthy.
func TestHealthzWithoutDriver(t *testing.T) {
	addr := freeTCPAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHealth(ctx, addr, "unix://"+filepath.Join(t.TempDir(), "none.sock")) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("status %d without a driver", resp.StatusCode)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestServeHealthBadAddress(t *testing.T) {
	if err := ServeHealth(context.Background(), "256.0.0.1:bad", "unix:///nonexistent/csi.sock"); err == nil {
		t.Fatal("ServeHealth accepted a bad address")
	}
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}
