package ploopattach

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// TestServingProcessErrorsBecomeDomainErrors: every typed error a serving
// process can answer maps to the domain sentinel the driver turns into a
// defined gRPC code (issue 9 item 6: a snapshot at the 1024-delta limit is
// ResourceExhausted, a locked image Aborted).
func TestServingProcessErrorsBecomeDomainErrors(t *testing.T) {
	for _, c := range []struct{ from, to error }{
		{attach.ErrResourceExhausted, volume.ErrResourceExhausted},
		{attach.ErrLocked, volume.ErrBusy},
		{attach.ErrAlreadyAttached, volume.ErrBusy},
		{attach.ErrNotAttached, volume.ErrBusy},
		{attach.ErrBusy, volume.ErrFailedPrecondition},
		{attach.ErrInvalid, volume.ErrInvalid},
		{attach.ErrCorrupt, volume.ErrCorrupt},
		{attach.ErrVolumeFailed, volume.ErrVolumeFailed},
		{attach.ErrAborted, volume.ErrVolumeFailed},
		{attach.ErrNotFound, volume.ErrFailedPrecondition},
		{attach.ErrMerging, volume.ErrBusy},
	} {
		err := mapErr(fmt.Errorf("snapshot /v: %w: detail", c.from))
		if !errors.Is(err, c.to) || !errors.Is(err, c.from) {
			t.Errorf("%v mapped to %v, want %v", c.from, err, c.to)
		}
	}
	if err := mapErr(errors.New("x")); err.Error() != "x" {
		t.Fatalf("untyped: %v", err)
	}
	if mapErr(nil) != nil {
		t.Fatal("nil mapped to an error")
	}
}

// fakeServer answers the control socket of image dir under runDir (the
// socket's name is part of the runtime directory's layout, attach.go).
func fakeServer(t *testing.T, runDir, dir string, answer func(op string) string) {
	t.Helper()
	rt := attach.RuntimeDir(runDir, dir)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(rt, "ctl.sock"))
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
			var req struct{ Op string }
			if json.NewDecoder(conn).Decode(&req) == nil {
				io.WriteString(conn, answer(req.Op)+"\n")
			}
			conn.Close()
		}
	}()
}

// TestMerge: the serving process's result becomes the domain's; a server
// from before merges (protocol 2) gives errors.ErrUnsupported, one that is
// merging already ErrBusy (the domain puts the merge off in both cases).
func TestMerge(t *testing.T) {
	runDir, dir := t.TempDir(), "/srv/vol"
	a := New(attach.NewClient(attach.AttachOptions{RunDir: runDir}))
	version, code := 2, ""
	fakeServer(t, runDir, dir, func(op string) string {
		switch {
		case op == "status":
			return fmt.Sprintf(`{"v":%d,"ok":true,"status":{"device":"/dev/loop7"}}`, version)
		case code != "":
			return fmt.Sprintf(`{"v":%d,"code":%q,"error":"no"}`, version, code)
		}
		return fmt.Sprintf(`{"v":%d,"ok":true,"merge":{"direction":"up","kept":"/p/b","dropped":"/p/a","bytesCopied":7,"duration":2000,"pause":3}}`, version)
	})
	req := volume.MergeRequest{Parent: "/p/a", Child: "/p/b"}
	if _, err := a.Merge(t.Context(), dir, req); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("old server: %v", err)
	}
	version = 3
	res, err := a.Merge(t.Context(), dir, req)
	want := volume.MergeResult{Direction: volume.MergeUp, Kept: "/p/b", Dropped: "/p/a", BytesCopied: 7, Duration: 2000, Pause: 3}
	if err != nil || res != want {
		t.Fatalf("merge: %+v %v", res, err)
	}
	code = "merging"
	if _, err := a.Merge(t.Context(), dir, req); !errors.Is(err, volume.ErrBusy) {
		t.Fatalf("busy server: %v", err)
	}
}
