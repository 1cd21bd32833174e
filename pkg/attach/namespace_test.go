package attach_test

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// TestDetachRefusedWhileMountedInAnotherNamespace: the filesystem on the
// device is mounted in a mount namespace the serving process cannot see
// (as the driver's staging mount is when the server runs in the data
// plane's container). Detach must still refuse (ErrBusy) and keep serving,
// and succeed once that mount is gone.
func TestDetachRefusedWhileMountedInAnotherNamespace(t *testing.T) {
	needTools(t, "mkfs.ext4", "unshare")
	f := newFixture(t, 64<<20)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	mp := t.TempDir()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t ext4 "$0" "$1" && echo mounted && exec sleep 600`, dev, mp)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "mounted" {
		t.Fatalf("mount in a private namespace failed: %q", line)
	}
	err = f.c.Detach(f.ctx(), f.dir)
	if !errors.Is(err, attach.ErrBusy) {
		t.Fatalf("detach while mounted elsewhere: %v, want ErrBusy", err)
	}
	if st := f.status(); st.Device != dev {
		t.Fatalf("server stopped serving after a refused detach: %+v", st)
	}
	// A refused detach must not have asked the kernel to detach on the
	// last close (autoclear): the device would vanish under the volume
	// once that other mount went.
	if b, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/autoclear"); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("autoclear of %s after a refused detach: %q %v", dev, b, err)
	}
	cmd.Process.Kill() // the namespace, and its mount, go with it
	cmd.Wait()
	if st := f.status(); st.Device != dev {
		t.Fatalf("device lost when the other mount went: %+v", st)
	}
	f.detach()
}
