package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// loopChurnEnv makes the test binary a helper process that attaches and
// detaches loop devices on its own files under the named directory until
// SIGTERM: the "other process" of issue 9 item 1, whose devices come and go
// while the driver lists loop devices.
const loopChurnEnv = "CSI_PLOOP_TEST_LOOP_CHURN"

// churnLoopDevices runs in the helper process.
func churnLoopDevices(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var files []string
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("churn%d.img", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil || os.Truncate(p, 4<<20) != nil {
			fmt.Fprintln(os.Stderr, "churn: backing file:", err)
			return 1
		}
		files = append(files, p)
	}
	cycles := 0
	for ctx.Err() == nil {
		for _, f := range files {
			dev, err := loopdev.Attach(ctx, f, loopdev.Options{})
			if err != nil {
				continue // lost the race for free devices, or stopping
			}
			_ = loopdev.Detach(dev.Path)
			cycles++
		}
	}
	fmt.Println("churn cycles:", cycles)
	return 0
}

// startLoopChurn starts the helper process; it is stopped, and whatever it
// left attached detached, when the test ends.
func startLoopChurn(t *testing.T) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "churn.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), loopChurnEnv+"="+dir)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		out.Close()
		log, _ := os.ReadFile(out.Name())
		t.Logf("loop churn helper: %s", log)
		detachLoops(t, dir)
	})
}
