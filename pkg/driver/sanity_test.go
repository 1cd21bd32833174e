package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// TestSanity runs csi-sanity against the real csi-ploop binary, started as
// a process serving a unix socket on a temp storage root, with real images,
// loop devices, FUSE and mounts: no fakes. It needs root, so it only runs
// with CSI_PLOOP_SANITY=1; CSI_PLOOP_SANITY_ACCESS=block runs the block
// access type (Ginkgo runs once per process, so that is a second run of the
// test binary; make test does both).
func TestSanity(t *testing.T) {
	if os.Getenv("CSI_PLOOP_SANITY") != "1" {
		t.Skip("set CSI_PLOOP_SANITY=1 to run csi-sanity (needs root)")
	}
	if os.Geteuid() != 0 {
		t.Skip("csi-sanity needs root")
	}
	tmp := t.TempDir()
	sock := filepath.Join(tmp, "csi.sock")
	startSanityDriver(t, tmp, sock)

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(tmp, "target")
	cfg.StagingPath = filepath.Join(tmp, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.TestVolumeParameters = map[string]string{ParamFsType: "ext4"}
	cfg.IDGen = &sanity.DefaultIDGenerator{}
	if access := os.Getenv("CSI_PLOOP_SANITY_ACCESS"); access != "" {
		cfg.TestVolumeAccessType = access
	}
	sanity.Test(t, cfg)
}

// startSanityDriver builds cmd/csi-ploop, runs it on sock with its storage
// root and runtime dir under tmp, and stops it when the test ends, failing
// the test if a serving process or loop device outlives the volumes.
func startSanityDriver(t *testing.T, tmp, sock string) {
	t.Helper()
	bin := filepath.Join(tmp, "csi-ploop")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/csi-ploop").CombinedOutput(); err != nil {
		t.Fatalf("build csi-ploop: %v\n%s", err, out)
	}
	runDir := filepath.Join(tmp, "run")
	logPath := filepath.Join(tmp, "driver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--endpoint", "unix://"+sock, "--root", filepath.Join(tmp, "root"),
		"--run-dir", runDir, "--node-id", "sanity-node")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logFile.Close()
		out, _ := os.ReadFile(logPath)
		if t.Failed() {
			t.Logf("driver log:\n%s", out)
		}
		t.Logf("driver answered OK: %d NodeStageVolume, %d NodePublishVolume, %d CreateSnapshot, %d ControllerExpandVolume",
			countOK(out, "NodeStageVolume"), countOK(out, "NodePublishVolume"),
			countOK(out, "CreateSnapshot"), countOK(out, "ControllerExpandVolume"))
		if leaked := loopsUnder(t, runDir); len(leaked) > 0 {
			t.Errorf("loop devices of serving processes left after the run: %v", leaked)
		}
	})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			t.Fatalf("driver did not create %s:\n%s", sock, out)
		}
	}
}

// countOK counts the RPCs of method the driver logged as successful.
func countOK(log []byte, method string) int {
	n := 0
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, `method="`+method+`"`) && strings.Contains(line, `code="OK"`) {
			n++
		}
	}
	return n
}

// loopsUnder lists loop devices whose backing file lies under runDir: the
// FUSE files of serving processes that outlived their volumes.
func loopsUnder(t *testing.T, runDir string) []string {
	infos, err := loopdev.List()
	if err != nil {
		t.Errorf("list loop devices: %v", err)
	}
	var leaked []string
	for _, in := range infos {
		if strings.HasPrefix(in.BackingFile, runDir+"/") {
			leaked = append(leaked, in.Path+" on "+in.BackingFile)
		}
	}
	return leaked
}
