package imagecli

import (
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// buildBinary builds cmd/csi-ploop into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "csi-ploop")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "./cmd/csi-ploop")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBinary builds cmd/csi-ploop and runs "csi-ploop image ..." as a real
// process: dispatch, exit codes and output streams end to end.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tmp := t.TempDir()
	bin := buildBinary(t)
	dir := filepath.Join(tmp, "vol")
	run := func(want int, args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != want {
			t.Fatalf("%v: exit %d, want %d\n%s%s", args, code, want, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	run(0, "image", "create", "--cluster-size", "256K", dir, "8G")
	if out, _ := run(0, "image", "info", dir); !strings.Contains(out, "8 GiB") || !strings.Contains(out, "256 KiB") {
		t.Fatalf("info: %s", out)
	}
	if out, _ := run(0, "image", "check", dir); !strings.Contains(out, "result: clean") {
		t.Fatalf("check: %s", out)
	}
	if _, errOut := run(2, "image", "create", dir, "8X"); !strings.Contains(errOut, "csi-ploop image create: invalid size") {
		t.Fatalf("bad size: %s", errOut)
	}
	if _, errOut := run(1, "image", "info", filepath.Join(tmp, "nope")); !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing dir: %s", errOut)
	}
	// Driver mode: a bad flag is refused before anything is served.
	if _, errOut := run(2, "--no-such-flag"); !strings.Contains(errOut, "-endpoint") {
		t.Fatalf("driver mode with a bad flag: %s", errOut)
	}
}
