package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/dataplane"
	"github.com/csi-ploop/csi-ploop/pkg/driver"
	"github.com/csi-ploop/csi-ploop/pkg/registration"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopattach"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopstore"
)

// driverConfig is everything the driver flags say.
type driverConfig struct {
	driver driver.Config
	runDir string
	// dataplaneSocket, when set, makes the data-plane supervisor start the
	// serving processes (else the driver spawns them itself).
	dataplaneSocket string
	dataplaneWait   time.Duration
	// registration is used when registration.Endpoint (--kubelet-registration-path) is set.
	registration registration.Config
}

func parseDriverFlags(args []string) (driverConfig, error) {
	host, _ := os.Hostname()
	var c driverConfig
	var mode string
	fs := flag.NewFlagSet("csi-ploop", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage:\n  csi-ploop [FLAGS]              run the CSI driver\n"+
			"  csi-ploop image COMMAND ...   operate on ploop images (csi-ploop image --help)\n"+
			"  csi-ploop dataplane COMMAND   the data plane that keeps the serving processes (csi-ploop dataplane help)\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.driver.Endpoint, "endpoint", "unix:///run/csi-ploop/csi.sock", "CSI endpoint (unix socket)")
	fs.StringVar(&c.driver.NodeID, "node-id", host, "node ID reported to Kubernetes (default: host name)")
	fs.StringVar(&c.driver.Root, "root", "/var/lib/csi-ploop", "storage root: volumes, deltas and metadata")
	fs.StringVar(&mode, "mode", "all", "services to serve: all, controller or node")
	fs.StringVar(&c.driver.DriverName, "driver-name", "ploop.csi.dev", "CSI driver name")
	fs.StringVar(&c.driver.MetricsAddress, "metrics-address", "", "serve Prometheus /metrics on this address (e.g. :9808); empty: off")
	fs.Int64Var(&c.driver.MaxVolumesPerNode, "max-volumes-per-node", 0, "NodeGetInfo max_volumes_per_node (0: unlimited)")
	fs.StringVar(&c.driver.HealthAddress, "health-address", "", "serve /healthz (the Probe RPC over the CSI socket) on this address (e.g. :9809); empty: off")
	fs.StringVar(&c.registration.Endpoint, "kubelet-registration-path", "", "CSI socket path as the kubelet sees it; set: register with the kubelet (no node-driver-registrar needed); empty: off")
	fs.StringVar(&c.registration.Dir, "plugin-registration-dir", registration.DefaultDir, "kubelet plugin registration directory (as this process sees it)")
	fs.StringVar(&c.runDir, "run-dir", attach.DefaultRunDir, "runtime directory of the per-volume serving processes")
	fs.StringVar(&c.dataplaneSocket, "dataplane-socket", "", "socket of the data plane (csi-ploop dataplane run --socket, same --run-dir) that starts and keeps the serving processes; empty: the driver starts them as its own children, and they die with its container")
	fs.DurationVar(&c.dataplaneWait, "dataplane-wait", dataplane.DefaultClientWait, "how long an attach waits for a data plane that does not answer")
	klogFlags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.driver.Mode = driver.Mode(mode)
	c.driver.Version = version
	c.registration.DriverName = c.driver.DriverName
	c.registration.CSISocket = c.driver.Endpoint
	return c, nil
}

// runDriver wires flags -> config -> the domain layer and the CSI server.
func runDriver(ctx context.Context, args []string) int {
	cfg, err := parseDriverFlags(args)
	if err == flag.ErrHelp {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "csi-ploop: %v\n", err)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "csi-ploop: %v\n", err)
		return 1
	}
	opts := attach.AttachOptions{Binary: self, RunDir: cfg.runDir, Logger: slog.New(logr.ToSlogHandler(klog.Background()))}
	if cfg.dataplaneSocket != "" {
		opts.Launcher = dataplane.NewClient(cfg.dataplaneSocket, cfg.dataplaneWait)
	}
	mgr, err := volume.Open(ctx, volume.Options{
		Root:      cfg.driver.Root,
		Store:     ploopstore.New(cfg.runDir),
		Attacher:  ploopattach.New(attach.NewClient(opts)),
		Mounter:   volume.NewMounter(),
		SkipSweep: cfg.driver.Mode == driver.ModeNode,
	})
	if err != nil {
		klog.ErrorS(err, "Cannot open the storage root", "root", cfg.driver.Root)
		return 1
	}
	defer mgr.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var regDone chan error
	if cfg.registration.Endpoint != "" {
		reg, err := registration.New(cfg.registration)
		if err != nil {
			klog.ErrorS(err, "Invalid kubelet registration settings")
			return 2
		}
		regDone = make(chan error, 1)
		go func() {
			err := reg.Run(ctx) // removes its socket when ctx ends
			if err != nil {
				cancel()
			}
			regDone <- err
		}()
	}
	code := 0
	if err := driver.Run(ctx, cfg.driver, mgr); err != nil {
		klog.ErrorS(err, "Driver stopped")
		code = 1
	}
	cancel()
	if regDone != nil {
		if err := <-regDone; err != nil && !errors.Is(err, context.Canceled) {
			klog.ErrorS(err, "Kubelet registration stopped")
			code = 1
		}
	}
	return code
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"
