package attach_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// TestOnlineSnapshotAtTheDepthLimit (issue 9 item 6): an online snapshot of
// a chain already 1024 deltas deep (ploop's limit) is refused with a typed
// ErrResourceExhausted that crosses the control socket (the driver answers
// ResourceExhausted, as for the offline path), and the volume keeps serving.
func TestOnlineSnapshotAtTheDepthLimit(t *testing.T) {
	f := newFixture(t, 16<<20)
	desc, err := image.ReadDescriptor(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 1024; i++ {
		name := fmt.Sprintf("d%04d.hds", i)
		if err := image.CreateDelta(filepath.Join(f.dir, name), 16<<20, image.DefaultClusterSize); err != nil {
			t.Fatal(err)
		}
		desc.AddTop(image.NewGUID(), name)
	}
	if err := desc.Write(f.dir); err != nil {
		t.Fatal(err)
	}
	f.attach()
	if st := f.status(); st.Depth != 1024 {
		t.Fatalf("depth %d, want 1024", st.Depth)
	}
	_, err = f.c.Snapshot(f.ctx(), f.dir, "")
	if !errors.Is(err, attach.ErrResourceExhausted) || !strings.Contains(err.Error(), "too deep") {
		t.Fatalf("snapshot at the depth limit: %v, want ErrResourceExhausted", err)
	}
	if st := f.status(); st.Depth != 1024 {
		t.Fatalf("depth %d after the refused snapshot", st.Depth)
	}
	if entries, _ := filepath.Glob(filepath.Join(f.dir, "root.hds.*")); len(entries) != 0 {
		t.Fatalf("refused snapshot left %v", entries)
	}
}

// TestFailedStartIsUndoneAndReported: a serving process that fails to
// start leaves nothing behind and its log's last lines are in the error.
// (The binary here stands in for a server that fails after it made its
// mount point; the real server's side is TestAbandonKeepsTheLog.)
func TestFailedStartIsUndoneAndReported(t *testing.T) {
	work := t.TempDir()
	script := filepath.Join(work, "failing-server")
	body := "#!/bin/sh\n# args: image attach --foreground=false --run-dir RUNDIR DIR\n" +
		"echo 'attach: mount /x: the reason the start failed' >&2\nexit 1\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(work, "img")
	if err := image.Create(dir, 16<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(work, "run")
	c := attach.NewClient(attach.AttachOptions{Binary: script, RunDir: runDir})
	_, err := c.Attach(t.Context(), dir)
	if !errors.Is(err, attach.ErrStartFailed) || !strings.Contains(err.Error(), "the reason the start failed") {
		t.Fatalf("failed start: %v, want ErrStartFailed with the log", err)
	}
	if entries, _ := os.ReadDir(runDir); len(entries) != 0 {
		t.Fatalf("a failed start left %v in the run dir", entries)
	}
}

// TestGivenUpStartLeavesNothing (issue 9 item 11): an Attach whose context
// ends while its serving process is still starting stops that process and
// removes what it made. It used to return while the process went on to
// mount FUSE, attach a loop device and serve a volume its caller had been
// told was not attached, so that nothing ever detached it.
func TestGivenUpStartLeavesNothing(t *testing.T) {
	f := newFixture(t, 16<<20)
	for _, wait := range []time.Duration{40 * time.Millisecond, 10 * time.Millisecond, time.Millisecond} {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		_, err := f.c.Attach(ctx, f.dir)
		cancel()
		if err == nil { // the server was faster than the deadline: try a shorter one
			f.detach()
			continue
		}
		if !errors.Is(err, attach.ErrStartFailed) {
			t.Fatalf("attach with a %v deadline: %v", wait, err)
		}
		if _, err := f.c.Status(t.Context(), f.dir); !errors.Is(err, attach.ErrNotAttached) {
			t.Fatalf("after a given-up attach the image is still served: %v", err)
		}
		if locked, err := image.IsLocked(f.dir); err != nil || locked {
			t.Fatalf("after a given-up attach the image is locked (%v, %v)", locked, err)
		}
		if leaks := leaksUnder(theSuite.runDir); leaks != "" {
			t.Fatalf("after a given-up attach:\n%s", leaks)
		}
		return
	}
	t.Skip("every serving process started within 1 ms: nothing to give up")
}
