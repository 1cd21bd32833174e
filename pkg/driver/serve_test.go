package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

func TestAbortedWhileOperationInFlight(t *testing.T) {
	dom := &fakeDomain{holdID: "vol-1", entered: make(chan struct{}, 10), release: make(chan struct{})}
	d := newTestDriver(t, dom)
	done := make(chan error)
	go func() { _, err := d.DeleteVolume(ctx, deleteReq("vol-1")); done <- err }()
	<-dom.entered
	_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-1", StagingTargetPath: "/s", VolumeCapability: blockCap()})
	wantCode(t, err, codes.Aborted)
	_, err = d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: "vol-1", Name: "s"})
	wantCode(t, err, codes.Aborted)
	if _, err := d.DeleteVolume(ctx, deleteReq("vol-2")); err != nil {
		t.Fatalf("other volume blocked: %v", err)
	}
	close(dom.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteVolume(ctx, deleteReq("vol-1")); err != nil {
		t.Fatalf("lock not released: %v", err)
	}
}

func TestAbortedOnSameCreateName(t *testing.T) {
	dom := &fakeDomain{holdID: "pvc-1", entered: make(chan struct{}, 10), release: make(chan struct{})}
	d := newTestDriver(t, dom)
	done := make(chan error)
	go func() { _, err := d.CreateVolume(ctx, createReq()); done <- err }()
	<-dom.entered
	_, err := d.CreateVolume(ctx, createReq())
	wantCode(t, err, codes.Aborted)
	close(dom.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestIdentity(t *testing.T) {
	d := newTestDriver(t, &fakeDomain{})
	info, err := d.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.Name != "ploop.csi.dev" || info.VendorVersion == "" {
		t.Fatalf("%v %v", info, err)
	}
	hasController := func(d *Driver) bool {
		caps, _ := d.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
		for _, c := range caps.Capabilities {
			if c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE {
				return true
			}
		}
		return false
	}
	if !hasController(d) {
		t.Fatal("mode all must advertise CONTROLLER_SERVICE")
	}
	nodeOnly, _ := New(Config{NodeID: "n", DriverName: "x", Mode: ModeNode}, &fakeDomain{})
	if hasController(nodeOnly) {
		t.Fatal("node mode advertises CONTROLLER_SERVICE")
	}
	d.cfg.Probe = func(context.Context) error { return errors.New("no loop") }
	_, err = d.Probe(ctx, &csi.ProbeRequest{})
	wantCode(t, err, codes.FailedPrecondition)
	if _, err := New(Config{NodeID: "n", DriverName: "x", Mode: "bogus"}, &fakeDomain{}); err == nil {
		t.Fatal("bogus mode accepted")
	}
}

func TestDefaultProbe(t *testing.T) {
	root := t.TempDir()
	loop := filepath.Join(root, "loop-control")
	probe := defaultProbe(root, loop)
	if err := probe(ctx); err == nil {
		t.Fatal("probe passed without loop-control")
	}
	if err := os.WriteFile(loop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := probe(ctx); err != nil {
		t.Fatal(err)
	}
	if err := defaultProbe(filepath.Join(root, "missing"), loop)(ctx); err == nil {
		t.Fatal("probe passed with a missing root")
	}
}

// TestServeOverSocket runs the real gRPC server on a unix socket (with a stale file
// in its place) and checks the interceptor's metrics.
func TestServeOverSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	if err := os.WriteFile(sock, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Endpoint: "unix://" + sock, NodeID: "n", DriverName: "ploop.csi.dev",
		Probe: func(context.Context) error { return nil }}, &fakeDomain{})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error)
	go func() { served <- d.Serve(sctx) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	if _, err := csi.NewIdentityClient(conn).Probe(cctx, &csi.ProbeRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	_, err = csi.NewControllerClient(conn).DeleteVolume(cctx, &csi.DeleteVolumeRequest{
		Secrets: map[string]string{"token": "hunter2"}})
	wantCode(t, err, codes.InvalidArgument)
	families, err := d.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "csi_ploop_") {
			seen[f.GetName()] = true
		}
	}
	for _, n := range []string{"csi_ploop_rpc_total", "csi_ploop_rpc_errors_total", "csi_ploop_rpc_duration_seconds"} {
		if !seen[n] {
			t.Errorf("metric %s not recorded", n)
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

func TestListenUnixRejectsOtherSchemes(t *testing.T) {
	for _, ep := range []string{"tcp://127.0.0.1:1", "/tmp/x.sock", "unix://"} {
		if _, err := listenUnix(ep); err == nil {
			t.Errorf("listenUnix(%q) accepted", ep)
		}
	}
}

func TestRequestVolumeID(t *testing.T) {
	if id := requestVolumeID(&csi.CreateSnapshotRequest{SourceVolumeId: "v"}); id != "v" {
		t.Fatal(id)
	}
	if id := requestVolumeID(&csi.DeleteSnapshotRequest{SnapshotId: "s"}); id != "s" {
		t.Fatal(id)
	}
	if id := requestVolumeID(&csi.GetPluginInfoRequest{}); id != "" {
		t.Fatal(id)
	}
}
