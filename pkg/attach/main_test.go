package attach_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// selfExecEnv makes the test binary act as "csi-ploop image attach" when
// the real binary does not have the command registered yet.
const selfExecEnv = "CSI_PLOOP_ATTACH_TEST_SERVER"

// suite is what TestMain prepares for all tests (passed explicitly, no
// mutable globals besides this one set once before m.Run).
type suite struct {
	binary string   // csi-ploop, or this test binary
	env    []string // extra env for the serving process
	runDir string   // parent of the runtime directories
	tmp    string   // everything the tests create lives under it
}

var theSuite suite

func TestMain(m *testing.M) {
	if os.Getenv(selfExecEnv) == "1" {
		os.Exit(serverMain(os.Args[1:]))
	}
	if os.Geteuid() != 0 {
		fmt.Println("attach tests need root (loop devices, FUSE); skipping")
		os.Exit(0)
	}
	tmp, err := os.MkdirTemp("", "csiat")
	if err != nil {
		panic(err)
	}
	s, err := prepare(tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	theSuite = s
	code := m.Run()
	if leaks := leaksUnder(s.tmp); leaks != "" {
		fmt.Fprintln(os.Stderr, "LEAKS after the suite:\n"+leaks)
		code = 1
	}
	os.RemoveAll(tmp)
	os.Exit(code)
}

// prepare builds csi-ploop once; if its "image attach" command is not
// wired up yet, the test binary serves instead (serverMain).
func prepare(tmp string) (suite, error) {
	s := suite{runDir: filepath.Join(tmp, "run"), tmp: tmp}
	bin := filepath.Join(tmp, "csi-ploop")
	build := exec.Command("go", "build", "-o", bin, "github.com/csi-ploop/csi-ploop/cmd/csi-ploop")
	if out, err := build.CombinedOutput(); err == nil {
		if exec.Command(bin, "image", "help", "attach").Run() == nil {
			s.binary = bin
			return s, nil
		}
		fmt.Println("csi-ploop has no 'image attach' yet; the test binary serves instead")
	} else {
		fmt.Printf("building csi-ploop failed (%v): %s; the test binary serves instead\n", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return s, err
	}
	s.binary = self
	s.env = []string{selfExecEnv + "=1"}
	return s, nil
}

// serverMain mimics "csi-ploop image attach [--foreground=false] [--run-dir D] DIR".
func serverMain(args []string) int {
	if len(args) < 2 || args[0] != "image" || args[1] != "attach" {
		fmt.Fprintln(os.Stderr, "test server: want 'image attach ...', got", args)
		return 2
	}
	fs := flag.NewFlagSet("attach", flag.ContinueOnError)
	fs.Bool("foreground", true, "")
	runDir := fs.String("run-dir", attach.DefaultRunDir, "")
	if err := fs.Parse(args[2:]); err != nil || fs.NArg() != 1 {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := attach.Serve(ctx, fs.Arg(0), attach.ServeOptions{
		RunDir: *runDir,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Ready:  func(st attach.Status) { fmt.Println(st.Device) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "attach:", err)
		return 1
	}
	return 0
}

// leaksUnder lists loop devices and mounts that live under dir.
func leaksUnder(dir string) string {
	var b strings.Builder
	infos, err := loopdev.List()
	if err != nil {
		return err.Error()
	}
	for _, in := range infos {
		if strings.HasPrefix(in.BackingFile, dir) {
			fmt.Fprintf(&b, "loop %s -> %s\n", in.Path, in.BackingFile)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir) {
			fmt.Fprintf(&b, "mount %s\n", line)
		}
	}
	return b.String()
}
