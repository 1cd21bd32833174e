package dataplane_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/moby/sys/mountinfo"

	"github.com/csi-ploop/csi-ploop/internal/iocheck"
	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/dataplane"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// binary is the csi-ploop built from this tree for the kernel tests ("" when
// not root): the supervisor and the serving processes under test are the
// real ones.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "csi-ploop-dp-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "csi-ploop")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/csi-ploop/csi-ploop/cmd/csi-ploop").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build csi-ploop: %v\n%s", err, out)
			return 1
		}
	}
	return m.Run()
}

// plane is a supervisor process of the built binary on a temp run dir,
// with the image directories a test made.
type plane struct {
	t       *testing.T
	tmp     string
	runDir  string
	socket  string
	logPath string
	args    []string
	proc    *exec.Cmd
	exited  chan struct{}
	images  []string
	client  *dataplane.Client
	attach  *attach.Client
}

func newPlane(t *testing.T, args ...string) *plane {
	t.Helper()
	if binary == "" {
		t.Skip("kernel test: needs root (loop devices, FUSE)")
	}
	tmp := t.TempDir()
	p := &plane{t: t, tmp: tmp, runDir: filepath.Join(tmp, "run"), socket: filepath.Join(tmp, "run", "dataplane.sock"),
		logPath: filepath.Join(tmp, "dataplane.log"), args: args}
	p.client = dataplane.NewClient(p.socket, 10*time.Second)
	p.attach = attach.NewClient(attach.AttachOptions{RunDir: p.runDir, Launcher: p.client})
	t.Cleanup(p.cleanup)
	p.start()
	return p
}

// start starts a supervisor and waits until it is ready.
func (p *plane) start(extra ...string) {
	p.t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"dataplane", "run", "--socket", p.socket, "--run-dir", p.runDir, "-v", "4"}, p.args...)
	cmd := exec.Command(binary, append(args, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.proc, p.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(p.exited)
	p.waitReady(cmd.Process.Pid)
}

func (p *plane) waitReady(pid int) {
	p.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := p.client.Status(context.Background())
		// With --init the supervisor is a child of the process started.
		if err == nil && st.Ready && (st.PID == pid || slices.Contains(p.args, "--init") && st.PID != 0) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("supervisor %d not ready within 60s: %v %+v\n%s", pid, err, st, p.log())
		}
	}
}

func (p *plane) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// stop ends the supervisor (SIGTERM); the serving processes keep running.
func (p *plane) stop() {
	if p.proc == nil {
		return
	}
	p.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.t.Errorf("supervisor ignored SIGTERM")
		p.proc.Process.Kill()
		<-p.exited
	}
	p.proc = nil
}

// image creates an image directory of size bytes.
func (p *plane) image(name string, size int64) string {
	p.t.Helper()
	dir := filepath.Join(p.tmp, name)
	if err := image.Create(dir, size, image.CreateOptions{}); err != nil {
		p.t.Fatal(err)
	}
	p.images = append(p.images, dir)
	return dir
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (p *plane) attachImage(dir string) string {
	p.t.Helper()
	dev, err := p.attach.Attach(ctx(p.t), dir)
	if err != nil {
		p.t.Fatalf("attach %s: %v\n%s", dir, err, p.log())
	}
	return dev
}

// volume is the supervisor's view of dir.
func (p *plane) volume(dir string) (dataplane.VolumeStatus, bool) {
	p.t.Helper()
	st, err := p.client.Status(ctx(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	for _, v := range st.Volumes {
		if v.Dir == dir {
			return v, true
		}
	}
	return dataplane.VolumeStatus{}, false
}

// waitForgotten waits until the supervisor keeps dir no more; what names
// the volume in the failure.
func (p *plane) waitForgotten(dir, what string) {
	p.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := p.volume(dir); !ok {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the supervisor still keeps %s", what)
		}
	}
}

// serverPID is the pid of dir's serving process as it answers itself.
func (p *plane) serverPID(dir string) int {
	p.t.Helper()
	st, err := p.attach.Status(ctx(p.t), dir)
	if err != nil {
		p.t.Fatalf("status %s: %v", dir, err)
	}
	return st.PID
}

// waitServer waits until dir is served by a process other than old.
func (p *plane) waitServer(dir string, old int) int {
	p.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if v, ok := p.volume(dir); ok && v.State == "serving" && v.PID != old && v.PID != 0 {
			return v.PID
		}
		if time.Now().After(deadline) {
			v, _ := p.volume(dir)
			p.t.Fatalf("no new server for %s within 30s: %+v\n%s", dir, v, p.log())
		}
	}
}

// mount makes an ext4 on dev and mounts it under the plane's temp dir.
func (p *plane) mount(dev string) string {
	p.t.Helper()
	mp, err := os.MkdirTemp(p.tmp, "mnt")
	if err != nil {
		p.t.Fatal(err)
	}
	testhelp.Run(p.t, "mkfs.ext4", "-q", "-F", dev)
	testhelp.Run(p.t, "mount", "-t", "ext4", dev, mp)
	p.t.Cleanup(func() { syscall.Unmount(mp, syscall.MNT_DETACH) })
	return mp
}

// cleanup detaches every image (the servers outlive the supervisor), stops
// the supervisor, and then removes whatever is left, by pid and by path.
func (p *plane) cleanup() {
	if p.t.Failed() {
		p.t.Logf("supervisor log:\n%s", tailString(p.log(), 64<<10))
		logs, _ := filepath.Glob(filepath.Join(p.runDir, "*", "serve.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			p.t.Logf("%s:\n%s", l, tailString(string(b), 32<<10))
		}
	}
	for _, m := range mountsUnder(p.tmp) {
		if !strings.HasPrefix(m, p.runDir+"/") {
			syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spawner := attach.NewClient(attach.AttachOptions{RunDir: p.runDir})
	for _, dir := range p.images {
		if err := spawner.Detach(c, dir); err != nil {
			p.t.Errorf("cleanup: detach %s: %v", dir, err)
		}
	}
	p.stop()
	for deadline := time.Now().Add(10 * time.Second); len(processesOf(p.runDir)) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond) // servers that said goodbye are exiting
	}
	for _, pid := range processesOf(p.runDir) {
		p.t.Errorf("cleanup: process %d of this test still runs; killing it", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if infos, _ := loopdev.ListUnder(p.tmp); len(infos) > 0 {
		for _, in := range infos {
			p.t.Errorf("cleanup: loop device %s left on %s", in.Path, in.BackingFile)
			loopdev.Detach(in.Path)
		}
	}
	for _, m := range mountsUnder(p.tmp) {
		p.t.Errorf("cleanup: mount %s left", m)
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func mountsUnder(dir string) []string {
	mounts, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// processesOf lists processes of our binary that name runDir on their
// command line (supervisors and serving processes of one test).
func processesOf(runDir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if strings.TrimSuffix(exe, " (deleted)") != binary {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if slices.Contains(strings.Split(string(cmdline), "\x00"), runDir) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(b), ") Z ") {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// writer runs an iocheck writer on path; it fails the test at the end if
// the writer saw an error.
func writer(t *testing.T, path string, size int64, sync bool) *iocheck.Writer {
	t.Helper()
	opts := iocheck.Options{Path: path, Size: size, Seed: uint64(time.Now().UnixNano())}
	if sync {
		opts.SyncEvery = 8
	}
	w, err := iocheck.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func checkWriter(t *testing.T, what string, r iocheck.Result) {
	t.Helper()
	t.Logf("%s: %v", what, r)
	if !r.OK() {
		t.Errorf("%s: first I/O error %q, first verify error %q", what, r.FirstIOError, r.FirstVerifyError)
	}
	if r.Writes == 0 {
		t.Errorf("%s: nothing written", what)
	}
}

var errTimeout = errors.New("timeout")

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// runtimeDirOf is dir's runtime directory under the plane's run dir.
func runtimeDirOf(t *testing.T, p *plane, dir string) string {
	return attach.RuntimeDir(p.runDir, dir)
}

// connOf is the fusectl name of the FUSE connection mounted at mnt.
func connOf(t *testing.T, mnt string) string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
	if err != nil || len(mounts) != 1 {
		t.Fatalf("mount %s: %v %v", mnt, mounts, err)
	}
	return strconv.Itoa(mounts[0].Major<<20 | mounts[0].Minor)
}

// startBinary starts the built binary with args, output to out.
func startBinary(t *testing.T, out *os.File, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}
