package dataplane

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/fuse"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// TestNoResendFallsBackWithALogLine: a connection whose kernel offered
// FUSE 7.39 (before FUSE_NOTIFY_RESEND) is not restarted after a crash: a
// successor would leave the dead server's requests unanswered for ever.
// The keeper gives the volume up (today's behaviour: EIO, the driver
// attaches it again) and says why; no successor is started.
func TestNoResendFallsBackWithALogLine(t *testing.T) {
	for _, c := range []struct {
		minor      uint32
		wantGiveUp bool
	}{{39, true}, {40, false}} {
		var logs bytes.Buffer
		dir := t.TempDir()
		s := New(Options{RunDir: dir, Binary: filepath.Join(dir, "no-such-binary"),
			Restart: RestartPolicy{MaxQuickFailures: 1}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		init, err := json.Marshal(fuse.InitState{Minor: 28, KernelMinor: c.minor, MaxWrite: 1 << 20, MaxPages: 256})
		if err != nil {
			t.Fatal(err)
		}
		v := &volume{s: s, dir: "/img", rt: dir, log: s.log, state: attach.KeepState{Init: init}, files: fakeFiles(t, dir)}
		if got := v.canResend(); got == c.wantGiveUp {
			t.Errorf("minor %d: canResend %v", c.minor, got)
		}
		v.restart()
		log := logs.String()
		tried := strings.Contains(log, "successor failed to start")
		if c.wantGiveUp && (!v.ended || tried || !strings.Contains(log, "FUSE_NOTIFY_RESEND")) {
			t.Errorf("minor %d: ended %v, tried a successor %v, log:\n%s", c.minor, v.ended, tried, log)
		}
		if !c.wantGiveUp && !tried {
			t.Errorf("minor %d: no successor tried; log:\n%s", c.minor, log)
		}
	}
}

// fakeFiles stand in for a connection's descriptors: a /dev/null "device"
// (poll never says POLLERR) and a directory as the mount root.
func fakeFiles(t *testing.T, dir string) attach.KeepFiles {
	t.Helper()
	dev, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, ctl, err := unixsock.MsgPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close(); root.Close(); ctl.Close() })
	return attach.KeepFiles{Dev: dev, Root: root, Ctl: ctl}
}
