package driver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopstore"
)

// TestSanity runs csi-sanity against the real driver and volume.Manager on a temp
// socket and root. It needs root (loop devices, mount) and the real pkg/image and
// pkg/attach adapters, so it only runs with CSI_PLOOP_SANITY=1;
// CSI_PLOOP_SANITY_ACCESS=block runs the block access type.
func TestSanity(t *testing.T) {
	if os.Getenv("CSI_PLOOP_SANITY") != "1" {
		t.Skip("set CSI_PLOOP_SANITY=1 to run csi-sanity (needs root)")
	}
	if os.Geteuid() != 0 {
		t.Skip("csi-sanity needs root")
	}
	store, attacher := sanityBackends(t)
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mgr, err := volume.Open(ctx, volume.Options{
		Root: root, Store: store, Attacher: attacher, Mounter: volume.NewMounter(), SweepGrace: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(tmp, "csi.sock")
	d, err := New(Config{Endpoint: "unix://" + sock, NodeID: "sanity-node", DriverName: "ploop.csi.dev",
		Mode: ModeAll, Root: root}, mgr)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(tmp, "target")
	cfg.StagingPath = filepath.Join(tmp, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.TestVolumeParameters = map[string]string{ParamFsType: "ext4"}
	cfg.IDGen = &sanity.DefaultIDGenerator{}
	// Ginkgo runs once per process, so block mode is a second run of the
	// test binary (make test does both).
	if access := os.Getenv("CSI_PLOOP_SANITY_ACCESS"); access != "" {
		cfg.TestVolumeAccessType = access
	}
	sanity.Test(t, cfg)

	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// sanityBackends returns the production ImageStore and Attacher; the
// serving processes are the real csi-ploop binary, built here.
func sanityBackends(t *testing.T) (volume.ImageStore, volume.Attacher) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "csi-ploop")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/csi-ploop").CombinedOutput()
	if err != nil {
		t.Fatalf("build csi-ploop: %v\n%s", err, out)
	}
	runDir := t.TempDir()
	return ploopstore.New(), attach.NewClient(attach.AttachOptions{Binary: bin, RunDir: runDir})
}
