package integration

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// binary is the csi-ploop executable TestMain built ("" when not root).
var binary string

func TestMain(m *testing.M) {
	if dir := os.Getenv(loopChurnEnv); dir != "" {
		os.Exit(churnLoopDevices(dir)) // the helper process of TestConcurrentOperations
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "csi-ploop-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "csi-ploop")
		out, err := exec.Command("go", "build", "-o", binary, "../../cmd/csi-ploop").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build csi-ploop: %v\n%s", err, out)
			return 1
		}
	}
	defer removeFixtures()
	return m.Run()
}

// harness runs the real driver binary on a temp root, run dir and socket and
// remembers what the test staged and published, so that cleanup can undo it.
type harness struct {
	t       *testing.T
	tmp     string // everything lives under here
	nodeID  string
	root    string
	runDir  string
	sock    string
	logPath string
	proc    *exec.Cmd
	exited  chan struct{}
	// lastExit is the exit status of the last stopped driver.
	lastExit int
	conn     *grpc.ClientConn
	ctrl     csi.ControllerClient
	node     csi.NodeClient
	ident    csi.IdentityClient

	published map[string]string // target -> volume ID
	staged    map[string]string // staging path -> volume ID
	// fuseConns are the FUSE connections (fusectl names) of serving
	// processes this driver started, seen while they were mounted.
	fuseMu    sync.Mutex
	fuseConns map[string]bool

	// With a data plane the driver runs as "make run-built" does it, in
	// a cgroup of its own (cgroup, the way a container runtime runs it),
	// and the data plane moves itself out of that into dataplaneCgroup.
	dataplane       bool
	cgroup          *cgroup
	dataplaneCgroup string
	// args are extra flags of the driver (without a data plane).
	args []string
}

// harnessOptions change newHarness's defaults.
type harnessOptions struct {
	nodeID string // default nodeID
	// root is the storage root; default tmp/root. A test that puts it on a
	// filesystem of its own creates that first.
	root string
	// dataplane: start the driver with "make run-built" (data plane
	// first, then the driver with --dataplane-socket) in a cgroup of its
	// own; else the driver starts the serving processes itself.
	dataplane bool
	// args are extra flags of the driver (e.g. --metrics-address); not
	// with dataplane.
	args []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, t.TempDir(), harnessOptions{})
}

// newHarnessWith starts a driver whose files all live under tmp (removed by
// the caller's t.TempDir, after every cleanup registered here).
func newHarnessWith(t *testing.T, tmp string, o harnessOptions) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the integration test needs root (loop devices, FUSE, mounts)")
	}
	h := &harness{
		t: t, tmp: tmp, nodeID: cmp.Or(o.nodeID, nodeID), root: cmp.Or(o.root, filepath.Join(tmp, "root")),
		runDir: filepath.Join(tmp, "run"), sock: filepath.Join(tmp, "csi.sock"), logPath: filepath.Join(tmp, "driver.log"),
		published: map[string]string{}, staged: map[string]string{}, fuseConns: map[string]bool{},
		dataplane: o.dataplane, args: o.args,
	}
	t.Cleanup(h.removeCgroups) // 5. the cgroups, once their processes are gone
	if h.dataplane {
		h.useDataplane()
	}
	t.Cleanup(h.forceCleanup)   // 4. detach leftovers, lazy unmount, loop devices
	t.Cleanup(h.stopDataplane)  // 3b. the data plane (after the volumes' teardown)
	t.Cleanup(h.stopDriver)     // 3. the driver
	t.Cleanup(h.unstageAll)     // 2. unstage via RPC (best effort)
	t.Cleanup(h.unpublishAll)   // 1. unpublish via RPC (best effort)
	t.Cleanup(h.dumpLogOnError) // 0. the driver log, when something failed
	h.startDriver()
	return h
}

// startDriver starts the binary and waits until Probe answers.
func (h *harness) startDriver() {
	h.t.Helper()
	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	defer logf.Close()
	var cmd *exec.Cmd
	if h.dataplane {
		cmd = h.makeRun()
	} else {
		cmd = exec.Command(binary, append([]string{"--endpoint", "unix://" + h.sock, "--root", h.root,
			"--run-dir", h.runDir, "--node-id", h.nodeID, "-v", "2"}, h.args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatalf("start driver: %v", err)
	}
	h.proc, h.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { _ = cmd.Wait(); close(exited) }(h.exited)
	h.connect()
}

// useDataplane makes the next startDriver run the driver with a data plane
// ("make run-built") in a cgroup of its own.
func (h *harness) useDataplane() {
	h.dataplane = true
	h.sock = filepath.Join(h.runDir, "csi.sock") // where make run-built puts it
	h.cgroup = newCgroup(h.t, "csi-ploop-test-driver")
	h.dataplaneCgroup = h.cgroup.name + "-dataplane"
}

// removeCgroups removes the cgroups of the driver and the data plane.
func (h *harness) removeCgroups() {
	if h.cgroup != nil {
		removeCgroups(h.t, h.cgroup.name)
		removeCgroups(h.t, h.dataplaneCgroup)
	}
}

// makeRun is "make run-built" with the harness's paths, started in the
// driver's cgroup (the shell joins it before it runs make).
func (h *harness) makeRun() *exec.Cmd {
	args := []string{"-c", `for d in $CSI_PLOOP_TEST_CGROUP; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@"`, "sh",
		"make", "--no-print-directory", "-C", repoRoot, "run-built", "BIN=" + binary, "RUN_DIR=" + h.runDir,
		"RUN_ROOT=" + h.root, "DATAPLANE_CGROUP=" + h.dataplaneCgroup, "RUN_ARGS=--node-id " + h.nodeID + " -v 2"}
	cmd := exec.Command("sh", args...)
	cmd.Env = append(os.Environ(), "CSI_PLOOP_TEST_CGROUP="+strings.Join(h.cgroup.dirs, " "))
	return cmd
}

// repoRoot is the repository (the Makefile's directory).
const repoRoot = "../.."

// dataplaneSocket is the data plane's socket of a harness with one.
func (h *harness) dataplaneSocket() string { return filepath.Join(h.runDir, "dataplane.sock") }

// stopDataplane stops the data plane of a harness with one (after the
// volumes' teardown: its serving processes outlive it otherwise).
func (h *harness) stopDataplane() {
	if !h.dataplane {
		return
	}
	out, err := exec.Command(binary, "dataplane", "stop", "--socket", h.dataplaneSocket()).CombinedOutput()
	if err != nil {
		h.t.Errorf("cleanup: dataplane stop: %v: %s", err, out)
	}
}

const nodeID = "test-node"

func (h *harness) connect() {
	h.t.Helper()
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.conn = conn
	h.ctrl, h.node, h.ident = csi.NewControllerClient(conn), csi.NewNodeClient(conn), csi.NewIdentityClient(conn)
	// Not a timed assertion: a generous bound on the driver starting at all.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := h.ident.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && resp.GetReady().GetValue() {
			return
		}
		select {
		case <-h.exited:
			h.t.Fatalf("driver exited during startup: %v", h.proc.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("driver did not answer Probe within 60s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopDriver sends SIGTERM and waits; SIGKILL if it does not stop. Idempotent.
func (h *harness) stopDriver() {
	if h.proc == nil {
		return
	}
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
	// The process group: with make run-built, make and the driver.
	_ = syscall.Kill(-h.proc.Process.Pid, syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		h.t.Errorf("driver ignored SIGTERM for 30s; killing it")
		_ = syscall.Kill(-h.proc.Process.Pid, syscall.SIGKILL)
		<-h.exited
	}
	h.lastExit = h.proc.ProcessState.ExitCode()
	h.proc = nil
}

// killDriver kills the driver and every serving process it started (-9),
// as a container runtime does when the node plugin's container dies.
func (h *harness) killDriver() {
	h.t.Helper()
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
	_ = h.proc.Process.Kill()
	<-h.exited
	h.proc = nil
	killServers(h.t, h.runDir)
	waitGone(h.t, h.runDir)
}

// restartDriver stops the driver gracefully and starts a new one on the same root.
func (h *harness) restartDriver() {
	h.t.Helper()
	h.stopDriver()
	h.startDriver()
}

func (h *harness) dumpLogOnError() {
	if !h.t.Failed() {
		return
	}
	if b, err := os.ReadFile(h.logPath); err == nil {
		const max = 64 << 10
		if len(b) > max {
			b = b[len(b)-max:]
		}
		h.t.Logf("driver log (tail):\n%s", b)
	}
}

func (h *harness) unpublishAll() {
	if h.conn == nil {
		return
	}
	for target, id := range h.published {
		ctx, cancel := rpcCtx()
		_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		cancel()
		if err != nil {
			h.t.Logf("cleanup: unpublish %s: %v", target, err)
		}
	}
}

func (h *harness) unstageAll() {
	if h.conn == nil {
		return
	}
	for path, id := range h.staged {
		ctx, cancel := rpcCtx()
		_, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path})
		cancel()
		if err != nil {
			h.t.Logf("cleanup: unstage %s: %v", path, err)
		}
	}
}

// forceCleanup removes whatever the RPCs could not: filesystem mounts first
// (a mounted device cannot be detached), then serving processes (through
// "csi-ploop image detach"), loop devices on our FUSE files, leftover
// processes of our binary and at last any mount under tmp, lazily.
func (h *harness) forceCleanup() {
	for _, m := range mountsUnder(h.t, h.tmp) {
		if !strings.HasPrefix(m, h.runDir+"/") {
			lazyUnmount(h.t, m)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(h.root, "volumes", "*"))
	for _, d := range dirs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, binary, "image", "detach", "--run-dir", h.runDir, d).CombinedOutput()
		cancel()
		if err != nil {
			h.t.Logf("cleanup: detach %s: %v: %s", d, err, out)
		}
	}
	detachLoops(h.t, h.tmp) // while the FUSE files still show their paths
	killServers(h.t, h.runDir)
	for _, m := range mountsUnder(h.t, h.tmp) {
		lazyUnmount(h.t, m)
	}
}

func lazyUnmount(t *testing.T, path string) {
	if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil {
		t.Logf("cleanup: lazy unmount %s: %v", path, err)
	}
}

func rpcCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}

// readLog is the driver's log so far.
func (h *harness) readLog() string {
	b, _ := os.ReadFile(h.logPath)
	return string(b)
}
