// Package registration implements the kubelet plugin registration protocol
// (k8s.io/kubelet/pkg/apis/pluginregistration/v1), the job node-driver-registrar
// does in other deployments: a gRPC Registration service on a unix socket in the
// kubelet's plugins_registry directory. The kubelet's plugin watcher finds the
// socket, calls GetInfo to learn the driver name and CSI endpoint, registers the
// driver (NodeGetInfo, CSINode object) and reports the result with
// NotifyRegistrationStatus.
package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// DefaultDir is the kubelet's plugin registration directory with the default kubelet root.
const DefaultDir = "/var/lib/kubelet/plugins_registry"

// Config of one registration service.
type Config struct {
	// DriverName is the CSI driver name the kubelet registers ("ploop.csi.dev").
	DriverName string
	// Endpoint is the CSI socket path as the kubelet sees it (on the host), e.g.
	// /var/lib/kubelet/plugins/ploop.csi.dev/csi.sock; a "unix://" prefix is accepted.
	Endpoint string
	// Dir is the directory the registration socket is created in, as this process
	// sees it; "" means DefaultDir.
	Dir string
	// SupportedVersions of the CSI spec; nil means ["1.0.0"].
	SupportedVersions []string
	// CSISocket is the CSI socket path as this process sees it; when set, Run
	// waits until it accepts connections before offering the registration
	// socket, so the kubelet's first NodeGetInfo does not fail.
	CSISocket string
}

// Server answers the kubelet's registration calls.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	cfg Config

	mu         sync.Mutex
	notified   bool
	registered bool
	lastErr    error

	// csiNotReady, when set (tests), is called each time Run found the CSI
	// socket not accepting connections yet.
	csiNotReady func()
}

// New checks cfg and fills in defaults; it does not listen.
func New(cfg Config) (*Server, error) {
	if cfg.DriverName == "" {
		return nil, errors.New("registration: driver name is required")
	}
	cfg.Endpoint = strings.TrimPrefix(cfg.Endpoint, "unix://")
	if !filepath.IsAbs(cfg.Endpoint) {
		return nil, fmt.Errorf("registration: kubelet registration path %q must be an absolute socket path", cfg.Endpoint)
	}
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if len(cfg.SupportedVersions) == 0 {
		cfg.SupportedVersions = []string{"1.0.0"}
	}
	return &Server{cfg: cfg}, nil
}

// SocketPath is where the registration socket lives: <dir>/<driver>-reg.sock,
// the name node-driver-registrar uses.
func (s *Server) SocketPath() string {
	return filepath.Join(s.cfg.Dir, s.cfg.DriverName+"-reg.sock")
}

// GetInfo tells the kubelet what this plugin is and where its CSI socket is.
func (s *Server) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.V(2).InfoS("Kubelet asked for plugin info", "driver", s.cfg.DriverName, "endpoint", s.cfg.Endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.cfg.DriverName,
		Endpoint:          s.cfg.Endpoint,
		SupportedVersions: append([]string(nil), s.cfg.SupportedVersions...),
	}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict. A failed registration
// is logged, kept for Status, and returned to the caller as an error.
func (s *Server) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notified = true
	s.registered = st.GetPluginRegistered()
	if !s.registered {
		s.lastErr = fmt.Errorf("kubelet did not register driver %s: %s", s.cfg.DriverName, st.GetError())
		klog.ErrorS(s.lastErr, "Plugin registration failed", "driver", s.cfg.DriverName)
		return nil, status.Error(codes.FailedPrecondition, s.lastErr.Error())
	}
	s.lastErr = nil
	klog.InfoS("Registered with the kubelet", "driver", s.cfg.DriverName, "endpoint", s.cfg.Endpoint)
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Status reports the last registration result: notified is false until the
// kubelet has called NotifyRegistrationStatus; err is its error when registration failed.
func (s *Server) Status() (notified, registered bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notified, s.registered, s.lastErr
}

// Listen creates the registration socket (replacing a stale one).
func (s *Server) Listen() (net.Listener, error) {
	return unixsock.Listen(s.SocketPath())
}

// Serve serves the Registration service on lis until ctx is done, then stops
// and removes the socket so the kubelet deregisters the plugin.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, s)
	klog.InfoS("Serving kubelet plugin registration", "socket", s.SocketPath(), "driver", s.cfg.DriverName)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	var err error
	select {
	case err = <-errc:
		if err != nil {
			err = fmt.Errorf("registration serve: %w", err)
		}
	case <-ctx.Done():
		stopWithin(srv, 5*time.Second)
	}
	if rmErr := os.Remove(s.SocketPath()); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		return errors.Join(err, fmt.Errorf("remove registration socket: %w", rmErr))
	}
	return err
}

// Run waits for the CSI socket (Config.CSISocket), then listens and serves
// until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.CSISocket != "" {
		if err := s.waitForSocket(ctx, strings.TrimPrefix(s.cfg.CSISocket, "unix://")); err != nil {
			return err
		}
	}
	lis, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, lis)
}

func stopWithin(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		srv.Stop()
	}
}

// waitForSocket polls until a unix socket accepts a connection or ctx ends.
func (s *Server) waitForSocket(ctx context.Context, path string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", path)
		if err == nil {
			conn.Close()
			return nil
		}
		if s.csiNotReady != nil {
			s.csiNotReady()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for CSI socket %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}
