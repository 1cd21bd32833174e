package attach

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// servedImage opens a three-delta image the way a server holds it (no
// device: only what the merge op's validation and bookkeeping need).
func servedImage(t *testing.T) (*server, []string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "img")
	if err := image.Create(dir, 64<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := image.SnapshotDir(dir, image.SnapshotOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	opts := ServeOptions{RunDir: t.TempDir()}.withDefaults()
	img, err := openImage(dir, runtimeDir(opts.RunDir, dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	s := newServer(dir, opts, img)
	return s, img.Chain().Deltas()
}

// TestMergeRequestValidation: only two adjacent deltas of the served
// chain, named by their absolute clean paths, and a known direction are
// accepted; nothing in a request reaches a file outside the chain.
func TestMergeRequestValidation(t *testing.T) {
	s, d := servedImage(t)
	outside := filepath.Join(filepath.Dir(s.dir), "other.hds")
	for _, c := range []struct {
		name          string
		parent, child string
		dir           string
		ok            bool
	}{
		{"bottom pair", d[0], d[1], "", true},
		{"top pair, up", d[1], d[2], "up", true},
		{"down", d[0], d[1], "down", true},
		{"reversed", d[1], d[0], "", false},
		{"not adjacent", d[0], d[2], "", false},
		{"same delta", d[1], d[1], "", false},
		{"relative", filepath.Base(d[0]), d[1], "", false},
		{"unclean", s.dir + "/../" + filepath.Base(s.dir) + "/" + filepath.Base(d[0]), d[1], "", false},
		{"outside the chain", outside, d[0], "", false},
		{"empty", "", "", "", false},
		{"bad direction", d[0], d[1], "sideways", false},
	} {
		_, err := s.validMerge(request{Op: opMerge, Parent: c.parent, Child: c.child, Direction: c.dir})
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// TestOneMergeAtATime: a second merge, a snapshot and a grow are refused
// with ErrMerging while one runs; status shows it; once it ended the next
// may start.
func TestOneMergeAtATime(t *testing.T) {
	s, d := servedImage(t)
	req := MergeRequest{Parent: d[0], Child: d[1]}
	job, err := s.merges.begin(s.dir, req)
	if err != nil {
		t.Fatal(err)
	}
	job.done.Store(3 << 20)
	job.total.Store(8 << 20)
	if _, err := s.merges.begin(s.dir, req); !errors.Is(err, ErrMerging) {
		t.Fatalf("second merge: %v", err)
	}
	if err := s.mergeBusy(); !errors.Is(err, ErrMerging) || ErrorCode(err) != codeMerging {
		t.Fatalf("snapshot or grow during a merge: %v (code %s)", err, ErrorCode(err))
	}
	if m := s.status().Merge; m == nil || m.Child != d[1] || m.Done != 3<<20 || m.Total != 8<<20 {
		t.Fatalf("status during a merge: %+v", m)
	}
	s.merges.end(job)
	if s.status().Merge != nil || s.mergeBusy() != nil {
		t.Fatal("the merge is still shown after its end")
	}
	job, err = s.merges.begin(s.dir, req)
	if err != nil {
		t.Fatalf("a merge after the last one ended: %v", err)
	}
	s.merges.end(job)
}

// TestStopMergesCancelsAndRefuses: a hand-over or detach cancels the
// running merge (with its reason) and refuses new ones; a merge that does
// not end in time is reported rather than waited for forever; a refused
// hand-over lets merges run again.
func TestStopMergesCancelsAndRefuses(t *testing.T) {
	s, d := servedImage(t)
	job, err := s.merges.begin(s.dir, MergeRequest{Parent: d[0], Child: d[1]})
	if err != nil {
		t.Fatal(err)
	}
	if s.stopMerges(errDraining, 50*time.Millisecond) {
		t.Fatal("stopMerges reported the end of a merge that is still running")
	}
	if !errors.Is(context.Cause(job.ctx), errDraining) {
		t.Fatalf("the merge's context: %v", context.Cause(job.ctx))
	}
	go func() { <-job.ctx.Done(); s.merges.end(job) }()
	if !s.stopMerges(errDraining, 10*time.Second) {
		t.Fatal("a cancelled merge was not seen ending")
	}
	if _, err := s.merges.begin(s.dir, MergeRequest{Parent: d[0], Child: d[1]}); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("a merge on a draining server: %v", err)
	}
	s.allowMerges()
	job, err = s.merges.begin(s.dir, MergeRequest{Parent: d[0], Child: d[1]})
	if err != nil {
		t.Fatalf("a merge after a refused hand-over: %v", err)
	}
	s.merges.end(job)
}

// TestMergeCancelledWhenTheClientHangsUp: a client whose context ended
// closes its connection; the server cancels the merge it asked for.
func TestMergeCancelledWhenTheClientHangsUp(t *testing.T) {
	server, client := net.Pipe()
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := watchHangup(server, cancel)
	client.Close()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a hang-up did not cancel the merge")
	}
	stop()
	if !errors.Is(context.Cause(ctx), errClientGone) {
		t.Fatalf("cause %v", context.Cause(ctx))
	}
	// Stopping the watch is not a hang-up.
	server, client = net.Pipe()
	defer client.Close()
	ctx, cancel = context.WithCancelCause(context.Background())
	watchHangup(server, cancel)()
	if ctx.Err() != nil {
		t.Fatalf("stopping the watch cancelled the merge: %v", context.Cause(ctx))
	}
}

// fakeServer answers one control connection at a time of runtime directory
// rt with answer.
func fakeServer(t *testing.T, rt string, answer func(request) response) {
	t.Helper()
	if err := os.MkdirAll(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(rt, socketName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			var req request
			if json.NewDecoder(conn).Decode(&req) == nil {
				json.NewEncoder(conn).Encode(answer(req))
			}
			conn.Close()
		}
	}()
}

// TestMergeClient: a server of protocol 2 (before merges) is not asked
// (errors.ErrUnsupported: the domain merges later); a merge request goes
// out as version 3 with the cleaned paths and direction, the answer's
// codes come back typed; every other request still goes out as version 2,
// so servers that predate merges keep answering them.
func TestMergeClient(t *testing.T) {
	runDir, dir := t.TempDir(), "/srv/img"
	c := NewClient(AttachOptions{RunDir: runDir})
	version := 2
	var got request
	fakeServer(t, runtimeDir(runDir, dir), func(req request) response {
		switch {
		case req.Op == opStatus:
			if req.Version != 2 {
				return response{Version: version, Code: codeInvalid, Error: "newer"}
			}
			return response{Version: version, OK: true, Status: &Status{Device: "/dev/loop9"}}
		case req.Op == opMerge && req.Child == "/d/busy":
			return response{Version: version, Code: codeMerging, Error: "merging"}
		case req.Op == opMerge:
			got = req
			return response{Version: version, OK: true, Merge: &MergeResult{Direction: image.MergeUp, BytesCopied: 42}}
		}
		return response{Version: version, Code: codeInvalid, Error: "unknown"}
	})
	ctx := context.Background()
	req := MergeRequest{Parent: "/d/a.hds", Child: "/d/x/../b.hds", Direction: image.MergeUp}
	if _, err := c.Merge(ctx, dir, req); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("merge on a protocol 2 server: %v", err)
	}
	version = 3
	res, err := c.Merge(ctx, dir, req)
	if err != nil || res.BytesCopied != 42 || res.Direction != image.MergeUp {
		t.Fatalf("merge: %+v %v", res, err)
	}
	if got.Version != 3 || got.Parent != "/d/a.hds" || got.Child != "/d/b.hds" || got.Direction != "up" {
		t.Fatalf("request sent: %+v", got)
	}
	if _, err := c.Merge(ctx, dir, MergeRequest{Parent: "/d/a", Child: "/d/busy"}); !errors.Is(err, ErrMerging) {
		t.Fatalf("merge while merging: %v", err)
	}
	if opVersion(opKeep) != 2 || opVersion(opHandover) != 2 || opVersion(opDetach) != 2 {
		t.Fatal("requests that predate merges must go out as version 2")
	}
}
