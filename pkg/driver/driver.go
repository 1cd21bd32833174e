// Package driver is the thin CSI layer of csi-ploop: it validates requests, takes a
// per-volume in-flight lock (Aborted when busy), calls the domain (volume.Manager)
// and maps its sentinel errors to gRPC codes. It owns no storage state.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// Domain is what the driver needs from the domain layer; *volume.Manager implements it.
type Domain interface {
	CreateVolume(ctx context.Context, req volume.CreateVolumeRequest) (volume.Volume, error)
	DeleteVolume(ctx context.Context, id string) error
	GetVolume(ctx context.Context, id string) (volume.Volume, error)
	ListVolumes(ctx context.Context, token string, maxEntries int) ([]volume.Volume, string, error)
	ExpandVolume(ctx context.Context, id string, size int64) (int64, error)
	CreateSnapshot(ctx context.Context, sourceVolID, name string) (volume.Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
	ListSnapshots(ctx context.Context, f volume.SnapshotFilter, token string, maxEntries int) ([]volume.Snapshot, string, error)
	Capacity(ctx context.Context) (int64, error)
	NodeStage(ctx context.Context, req volume.StageRequest) error
	NodeUnstage(ctx context.Context, id, stagingPath string) error
	NodePublish(ctx context.Context, req volume.PublishRequest) error
	NodeUnpublish(ctx context.Context, id, targetPath string) error
	NodeStats(ctx context.Context, id, path string) (volume.VolumeStats, error)
	NodeExpand(ctx context.Context, req volume.NodeExpandRequest) (int64, error)
}

var _ Domain = (*volume.Manager)(nil)

// Mode selects which CSI services are served.
type Mode string

const (
	ModeAll        Mode = "all"
	ModeController Mode = "controller"
	ModeNode       Mode = "node"
)

// Config of one driver instance.
type Config struct {
	Endpoint          string // "unix:///path/csi.sock"
	NodeID            string
	DriverName        string // "ploop.csi.dev"
	Version           string
	Mode              Mode
	Root              string // storage root, for the default probe
	MetricsAddress    string // "" = no metrics server
	HealthAddress     string // "" = no /healthz server (liveness through the Probe RPC)
	MaxVolumesPerNode int64  // 0 = unlimited
	// Probe reports readiness; nil means defaultProbe (root writable, loop-control present).
	Probe func(ctx context.Context) error
}

// Driver implements the CSI Identity, Controller and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg     Config
	dom     Domain
	locks   *volume.KeyLock
	metrics *Metrics
}

// New checks cfg and builds a Driver; it does not listen.
func New(cfg Config, dom Domain) (*Driver, error) {
	if cfg.DriverName == "" || cfg.NodeID == "" || dom == nil {
		return nil, errors.New("driver: DriverName, NodeID and a domain are required")
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeAll
	case ModeAll, ModeController, ModeNode:
	default:
		return nil, fmt.Errorf("driver: unknown mode %q", cfg.Mode)
	}
	if cfg.Probe == nil {
		cfg.Probe = defaultProbe(cfg.Root, "/dev/loop-control")
	}
	d := &Driver{cfg: cfg, dom: dom, locks: volume.NewKeyLock(), metrics: NewMetrics()}
	if ms, ok := dom.(mergeStatser); ok {
		d.metrics.reg.MustRegister(newMergeCollector(ms))
	}
	return d, nil
}

// Metrics exposes the driver's own registry (for ServeMetrics or tests).
func (d *Driver) Metrics() *Metrics { return d.metrics }

func (d *Driver) controllerEnabled() bool { return d.cfg.Mode != ModeNode }
func (d *Driver) nodeEnabled() bool       { return d.cfg.Mode != ModeController }

// Register adds the services of the configured mode to srv.
func (d *Driver) Register(srv *grpc.Server) {
	csi.RegisterIdentityServer(srv, d)
	if d.controllerEnabled() {
		csi.RegisterControllerServer(srv, d)
	}
	if d.nodeEnabled() {
		csi.RegisterNodeServer(srv, d)
	}
}

// Run serves CSI on cfg.Endpoint (and metrics on cfg.MetricsAddress) until ctx ends.
func Run(ctx context.Context, cfg Config, dom Domain) error {
	d, err := New(cfg, dom)
	if err != nil {
		return err
	}
	return d.Serve(ctx)
}

// Serve listens on the unix socket and serves until ctx is done.
func (d *Driver) Serve(ctx context.Context) error {
	lis, err := listenUnix(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.intercept))
	d.Register(srv)
	if d.cfg.MetricsAddress != "" {
		go func() {
			if err := ServeMetrics(ctx, d.cfg.MetricsAddress, d.metrics.Registry()); err != nil {
				klog.ErrorS(err, "Metrics server stopped", "address", d.cfg.MetricsAddress)
			}
		}()
	}
	if d.cfg.HealthAddress != "" {
		go func() {
			if err := ServeHealth(ctx, d.cfg.HealthAddress, d.cfg.Endpoint); err != nil {
				klog.ErrorS(err, "Health server stopped", "address", d.cfg.HealthAddress)
			}
		}()
	}
	klog.InfoS("Serving CSI", "endpoint", d.cfg.Endpoint, "mode", d.cfg.Mode, "node", d.cfg.NodeID)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc serve: %w", err)
	case <-ctx.Done():
		stopGracefully(srv, 10*time.Second)
		return nil
	}
}

// stopGracefully lets in-flight RPCs finish but not forever: a hung attach must not
// keep a terminating pod alive.
func stopGracefully(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		srv.Stop()
	}
}

// listenUnix opens a unix socket from "unix:///abs/path" (or "unix://rel"),
// removing a stale socket left by a previous process.
func listenUnix(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" {
		return nil, fmt.Errorf("endpoint %q: want unix:///path", endpoint)
	}
	path := filepath.Join(u.Host, u.Path)
	if path == "" {
		return nil, fmt.Errorf("endpoint %q: empty socket path", endpoint)
	}
	return unixsock.Listen(path)
}

// lock takes the in-flight lock for key; CSI wants ABORTED for a second operation
// on the same volume while one is pending.
func (d *Driver) lock(key string) (func(), error) {
	if !d.locks.TryLock(key) {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", key)
	}
	return func() { d.locks.Unlock(key) }, nil
}

func required(value, field string) error {
	if value == "" {
		return invalid("%s is required", field)
	}
	return nil
}
