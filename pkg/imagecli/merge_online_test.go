package imagecli

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// attachWithBinary builds csi-ploop and serves dir with "image attach"
// (the real serving process); it returns the device. The server is
// detached, or killed, when the test ends.
func attachWithBinary(t *testing.T, dir, runDir string) string {
	t.Helper()
	cmd := exec.Command(buildBinary(t), "image", "attach", "--run-dir", runDir, dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := attach.NewClient(attach.AttachOptions{RunDir: runDir}).Detach(ctx, dir); err != nil {
			t.Errorf("detach: %v", err)
			cmd.Process.Kill()
		}
		<-exited
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("image attach printed no device: %v\n%s", err, logs.String())
	}
	return strings.TrimSpace(line)
}

// TestMergeOnline: "image merge" of an attached image goes through its
// serving process: the device shows the same data afterwards, the chain is
// one delta shorter, the dropped file is gone, and the result line says it
// ran online with its pause.
func TestMergeOnline(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a real serving process (loop device, FUSE)")
	}
	tmp := t.TempDir()
	dir, runDir := filepath.Join(tmp, "img"), filepath.Join(tmp, "run")
	ok(t, "create", "--cluster-size", "64K", dir, "64M")
	dev := attachWithBinary(t, dir, runDir)
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i/4096 + 1)
	}
	writeDevice(t, dev, want[:4<<20], 0)
	guid := strings.TrimSpace(ok(t, "snapshot", "--run-dir", runDir, dir).stdout)
	writeDevice(t, dev, want[4<<20:], 4<<20)
	before := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)

	r := ok(t, "merge", "--run-dir", runDir, dir, guid)
	t.Logf("%s", r.stdout)
	if !strings.Contains(r.stdout, "(online, ") || !strings.Contains(r.stdout, "I/O paused") {
		t.Fatalf("merge of an attached image: %q", r.stdout)
	}
	after := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)
	if len(after.Snapshots) != 1 || len(before.Snapshots) != 2 {
		t.Fatalf("chain before %+v, after %+v", before, after)
	}
	for _, s := range before.Snapshots {
		if _, err := os.Stat(s.Path); s.Path != after.Snapshots[0].Path && !os.IsNotExist(err) {
			t.Fatalf("the dropped delta %s is still there (%v)", s.Path, err)
		}
	}
	got := make([]byte, len(want))
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the device's data changed across the merge (%v)", err)
	}
	st, err := attach.NewClient(attach.AttachOptions{RunDir: runDir}).Status(context.Background(), dir)
	if err != nil || st.Depth != 1 {
		t.Fatalf("server after the merge: %+v %v", st, err)
	}
	if _, err := image.ReadDescriptor(dir); err != nil {
		t.Fatal(err)
	}
}

// writeDevice writes p at off on the block device and syncs it.
func writeDevice(t *testing.T, dev string, p []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
