package attach_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// suite is what TestMain prepares for all tests (passed explicitly, no
// mutable globals besides this one set once before m.Run).
type suite struct {
	binary string // the csi-ploop built from this tree
	runDir string // parent of the runtime directories
	tmp    string // everything the tests create lives under it
}

var theSuite suite

func TestMain(m *testing.M) {
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
		os.RemoveAll(tmp)
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

// prepare builds csi-ploop once: the serving processes under test are the
// real "csi-ploop image attach". A build that fails, or a binary without
// that command, fails the suite: serving from anything else would test
// something other than what ships.
func prepare(tmp string) (suite, error) {
	s := suite{runDir: filepath.Join(tmp, "run"), tmp: tmp, binary: filepath.Join(tmp, "csi-ploop")}
	build := exec.Command("go", "build", "-o", s.binary, "github.com/csi-ploop/csi-ploop/cmd/csi-ploop")
	if out, err := build.CombinedOutput(); err != nil {
		return s, fmt.Errorf("building csi-ploop failed: %v\n%s", err, out)
	}
	if out, err := exec.Command(s.binary, "image", "help", "attach").CombinedOutput(); err != nil {
		return s, fmt.Errorf("csi-ploop has no working 'image attach': %v\n%s", err, out)
	}
	return s, nil
}

// leaksUnder lists loop devices and mounts (FUSE mounts of serving
// processes included) that live under dir.
func leaksUnder(dir string) string {
	var b strings.Builder
	infos, err := loopdev.ListUnder(dir)
	if err != nil {
		return err.Error()
	}
	for _, in := range infos {
		fmt.Fprintf(&b, "loop %s -> %s\n", in.Path, in.BackingFile)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err.Error()
	}
	for _, m := range mounts {
		fmt.Fprintf(&b, "mount %s (%s %s)\n", m.Mountpoint, m.FSType, m.Source)
	}
	return b.String()
}
