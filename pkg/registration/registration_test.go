package registration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// dialAsKubelet connects the way the kubelet's plugin watcher does: a plain unix
// socket path, insecure transport, a unix context dialer.
func dialAsKubelet(t *testing.T, socket string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

func startServer(t *testing.T, cfg Config) (*Server, func() error) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	lis, err := s.Listen()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, lis) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("Serve did not return after cancel")
		}
	}
	t.Cleanup(func() { _ = stop() })
	return s, stop
}

func TestKubeletRegistration(t *testing.T) {
	dir := t.TempDir()
	const endpoint = "/var/lib/kubelet/plugins/ploop.csi.dev/csi.sock"
	s, stop := startServer(t, Config{DriverName: "ploop.csi.dev", Endpoint: "unix://" + endpoint, Dir: dir})
	socket := filepath.Join(dir, "ploop.csi.dev-reg.sock")
	if s.SocketPath() != socket {
		t.Fatalf("socket %s, want %s", s.SocketPath(), socket)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("registration socket: %v %v", fi, err)
	}
	client := dialAsKubelet(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "ploop.csi.dev" || info.Endpoint != endpoint ||
		!slices.Equal(info.SupportedVersions, []string{"1.0.0"}) {
		t.Fatalf("GetInfo = %+v", info)
	}
	if notified, _, _ := s.Status(); notified {
		t.Fatal("Status reports a notification before the kubelet sent one")
	}

	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatalf("NotifyRegistrationStatus(true): %v", err)
	}
	if notified, registered, err := s.Status(); !notified || !registered || err != nil {
		t.Fatalf("Status after success = %v %v %v", notified, registered, err)
	}

	_, err = client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "bad version"})
	if status.Code(err) != codes.FailedPrecondition || !contains(err.Error(), "bad version") {
		t.Fatalf("NotifyRegistrationStatus(false) = %v, want FailedPrecondition with the kubelet's error", err)
	}
	if notified, registered, err := s.Status(); !notified || registered || err == nil || !contains(err.Error(), "bad version") {
		t.Fatalf("Status after failure = %v %v %v", notified, registered, err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after shutdown: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "ploop.csi.dev-reg.sock")
	if err := os.WriteFile(socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _ = startServer(t, Config{DriverName: "ploop.csi.dev", Endpoint: "/csi/csi.sock", Dir: dir,
		SupportedVersions: []string{"1.0.0", "1.1.0"}})
	info, err := dialAsKubelet(t, socket).GetInfo(context.Background(), &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.SupportedVersions, []string{"1.0.0", "1.1.0"}) {
		t.Fatalf("versions %v", info.SupportedVersions)
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Endpoint: "/csi/csi.sock"},
		{DriverName: "ploop.csi.dev"},
		{DriverName: "ploop.csi.dev", Endpoint: "csi.sock"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	s, err := New(Config{DriverName: "d", Endpoint: "/p/csi.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if s.SocketPath() != filepath.Join(DefaultDir, "d-reg.sock") {
		t.Fatalf("default socket %s", s.SocketPath())
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestRunWaitsForCSISocket: the registration socket appears only once the CSI
// socket accepts connections.
func TestRunWaitsForCSISocket(t *testing.T) {
	dir := t.TempDir()
	csiSock := filepath.Join(dir, "csi.sock")
	s, err := New(Config{DriverName: "ploop.csi.dev", Endpoint: "/k/csi.sock", Dir: filepath.Join(dir, "reg"), CSISocket: "unix://" + csiSock})
	if err != nil {
		t.Fatal(err)
	}
	// Run offers its socket only after a dial of the CSI socket succeeded;
	// once it has reported two failed dials it is waiting, and with the CSI
	// socket still absent no later dial can succeed: the registration socket
	// must not exist now, whatever the timing.
	notReady := make(chan struct{})
	s.csiNotReady = func() {
		select {
		case notReady <- struct{}{}:
		default: // nobody waits any more
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-notReady
	<-notReady
	if _, err := os.Stat(s.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("registration socket offered before the CSI socket: %v", err)
	}
	lis, err := net.Listen("unix", csiSock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if _, err := dialAsKubelet(t, s.SocketPath()).GetInfo(ctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
