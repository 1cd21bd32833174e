package attach

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// TestRemoteErrorKeepsSentinelAndMessage: an error crosses the control
// socket with its sentinel and its text unchanged (the client used to glue
// the sentinel's text in front of the server's message).
func TestRemoteErrorKeepsSentinelAndMessage(t *testing.T) {
	for _, c := range errorCodes {
		for _, orig := range []error{
			fmt.Errorf("snapshot /img: %w: detail", c.sentinel),
			fmt.Errorf("%w: detail", c.sentinel),
		} {
			resp := errResponse(orig)
			if resp.Code != c.code {
				t.Errorf("%v: code %q, want %q", orig, resp.Code, c.code)
			}
			err := remoteError(resp)
			if !errors.Is(err, c.sentinel) || err.Error() != orig.Error() {
				t.Errorf("%q crossed the socket as %q (sentinel kept: %v)", orig, err, errors.Is(err, c.sentinel))
			}
		}
	}
	err := remoteError(errResponse(errors.New("x")))
	if err.Error() != "x" {
		t.Fatalf("untyped error crossed as %q, want %q", err, "x")
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.sentinel) {
			t.Errorf("untyped error matches %v", c.sentinel)
		}
	}
	if err := remoteError(response{Code: "a-code-from-a-newer-server", Error: "y"}); err.Error() != "y" {
		t.Fatalf("unknown code: %q", err)
	}
}

// TestImageErrorsBecomeTypedCodes: what pkg/image and the file system
// report reaches the client as a typed error (issue 9 item 6: a snapshot at
// ploop's 1024-delta limit must be ResourceExhausted in CSI, not Internal).
func TestImageErrorsBecomeTypedCodes(t *testing.T) {
	for _, c := range []struct {
		err      error
		code     string
		sentinel error
	}{
		{fmt.Errorf("snapshot: %w: 1024 deep", image.ErrChainTooDeep), codeResourceExhausted, ErrResourceExhausted},
		{fmt.Errorf("open: %w", image.ErrBusy), codeLocked, ErrLocked},
		{fmt.Errorf("open: %w", image.ErrCorrupt), codeCorrupt, ErrCorrupt},
		{fmt.Errorf("grow: %w", image.ErrInvalid), codeInvalid, ErrInvalid},
		{fmt.Errorf("new top: %w", fs.ErrNotExist), codeNotFound, ErrNotFound},
	} {
		resp := errResponse(c.err)
		if resp.Code != c.code || resp.Version != ProtocolVersion {
			t.Errorf("%v: code %q v%d, want %q v%d", c.err, resp.Code, resp.Version, c.code, ProtocolVersion)
		}
		if err := remoteError(resp); !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.err.Error()) {
			t.Errorf("%v crossed as %v", c.err, err)
		}
	}
}

// TestProtocolVersions: a request without a version (a client from before
// versioning) is served; one from a newer protocol is refused as invalid;
// every response carries the server's version.
func TestProtocolVersions(t *testing.T) {
	handler := func(req request) (response, func()) {
		return response{OK: true, GUID: req.Op}, nil
	}
	for _, c := range []struct {
		req    string
		ok     bool
		code   string
		answer string
	}{
		{`{"op":"status"}`, true, "", "status"},
		{`{"v":1,"op":"snapshot"}`, true, "", "snapshot"},
		{`{"v":99,"op":"status"}`, false, codeInvalid, ""},
		{`not json`, false, codeInvalid, ""},
	} {
		server, client := net.Pipe()
		go serveConn(server, handler)
		if _, err := client.Write([]byte(c.req + "\n")); err != nil {
			t.Fatal(err)
		}
		var resp response
		if err := json.NewDecoder(client).Decode(&resp); err != nil {
			t.Fatalf("%s: %v", c.req, err)
		}
		client.Close()
		if resp.OK != c.ok || resp.Code != c.code || resp.GUID != c.answer || resp.Version != ProtocolVersion {
			t.Errorf("%s: answered %+v", c.req, resp)
		}
	}
}

func TestRuntimeDirIsShortAndStable(t *testing.T) {
	a, b := runtimeDir(DefaultRunDir, "/x/y"), runtimeDir(DefaultRunDir, "/x/y")
	if a != b || len(a) != len(DefaultRunDir)+17 {
		t.Fatalf("%s %s", a, b)
	}
}

func TestIsMountPoint(t *testing.T) {
	if ok, err := isMountPoint("/proc"); err != nil || !ok {
		t.Fatalf("/proc: %v %v", ok, err)
	}
	if ok, err := isMountPoint(t.TempDir()); err != nil || ok {
		t.Fatalf("temp dir: %v %v", ok, err)
	}
}

// fakeChain reports a sticky failure the way pkg/image's chain does after a
// failed sync (Err).
type fakeChain struct{ err error }

func (f *fakeChain) Err() error { return f.err }

// logCounter counts the error records logged.
type logCounter struct {
	slog.Handler
	errors *int
}

func (h logCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		*h.errors++
	}
	return nil
}

func (h logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h logCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }

// TestFailedVolumeIsReported (issue 9 item 4): once the chain reports a
// failed sync, the serving process logs it once, its status says so, and
// snapshot and grow are refused with ErrVolumeFailed, typed across the
// socket.
func TestFailedVolumeIsReported(t *testing.T) {
	img := openTestImage(t)
	defer img.Close()
	dir := img.Dir
	chain := &fakeChain{}
	errorsLogged := 0
	s := &server{dir: dir, img: img, dev: "/dev/loop-test", opts: ServeOptions{RequestTimeout: DefaultRequestTimeout},
		log:    slog.New(logCounter{Handler: slog.DiscardHandler, errors: &errorsLogged}),
		health: func() error { return chainFailure(chain) }}

	s.noteFailure()
	if st := s.status(); st.Failure != "" || errorsLogged != 0 {
		t.Fatalf("healthy volume reports %q (%d errors logged)", st.Failure, errorsLogged)
	}
	chain.err = errors.New("fdatasync root.hds: input/output error")
	if chainFailure(struct{}{}) != nil {
		t.Fatal("a chain that cannot tell reports a failure")
	}
	if st := s.status(); !strings.Contains(st.Failure, "input/output error") {
		t.Fatalf("status of a failed volume: %+v", st)
	}
	for _, req := range []request{{Op: opSnapshot}, {Op: opGrow, Size: 2 << 20}} {
		resp, _ := s.handle(req)
		if resp.OK || resp.Code != codeVolumeFailed {
			t.Errorf("%s on a failed volume: %+v", req.Op, resp)
		}
		if err := remoteError(resp); !errors.Is(err, ErrVolumeFailed) {
			t.Errorf("%s: client sees %v", req.Op, err)
		}
	}
	s.noteFailure() // the run loop's look
	if errorsLogged != 1 {
		t.Errorf("the failure was logged %d times, want once", errorsLogged)
	}
}

// TestClientReportsFailure: Client.Status carries the server's failure
// (a fake server answers on the control socket).
func TestClientReportsFailure(t *testing.T) {
	runDir := t.TempDir()
	dir := t.TempDir()
	rt := runtimeDir(runDir, dir)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(rt, socketName))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveConn(conn, func(request) (response, func()) {
				return response{OK: true, Status: &Status{Device: "/dev/loop9", Failure: "sync failed"}}, nil
			})
		}
	}()
	st, err := NewClient(AttachOptions{RunDir: runDir}).Status(context.Background(), dir)
	if err != nil || st.Failure != "sync failed" || st.Device != "/dev/loop9" {
		t.Fatalf("status %+v, %v", st, err)
	}
}

// TestAbandonKeepsTheLog: a start that fails removes its socket and mount
// point but keeps serve.log, whose last lines the client puts into its
// error (issue 9 item 1: "(no log: ... serve.log: no such file)").
func TestAbandonKeepsTheLog(t *testing.T) {
	rt := t.TempDir()
	img := openTestImage(t)
	dir := img.Dir
	for _, name := range []string{logName, socketName} {
		if err := os.WriteFile(filepath.Join(rt, name), []byte("attach: mount failed: boom\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(rt, mountName), 0o700); err != nil {
		t.Fatal(err)
	}
	s := &server{dir: dir, rt: rt, img: img, log: slog.New(slog.DiscardHandler)}
	if err := s.abandon(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(rt)
	if len(entries) != 1 || entries[0].Name() != logName {
		t.Fatalf("after abandon: %v, want only %s", entries, logName)
	}
	if tail := LogTail(rt); tail != "attach: mount failed: boom" {
		t.Fatalf("log tail %q", tail)
	}
	big := bytes.Repeat([]byte("0123456789 line\n"), 1000)
	os.WriteFile(filepath.Join(rt, logName), append(big, []byte("the last line")...), 0o600)
	if tail := LogTail(rt); len(tail) > logTailBytes || !strings.HasSuffix(tail, "the last line") || !strings.HasPrefix(tail, "0123") {
		t.Fatalf("long log tail: %d bytes, %q...", len(tail), tail[:20])
	}
}

// openTestImage creates and opens a small image without root (no direct I/O).
func openTestImage(t *testing.T) *image.Image {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "img")
	if err := image.Create(dir, 1<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	img, err := image.OpenDir(dir, image.OpenOptions{FS: image.NewOSFS(false)})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestBinaryIDIsTheGoBuildID: the ID of an executable is its Go build ID
// (the test binary has one), the same on every call, and different
// executables differ.
func TestBinaryIDIsTheGoBuildID(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	id := computeBinaryID(exe)
	if !strings.HasPrefix(id, "go:") || len(id) < 20 || id != BinaryID() {
		t.Fatalf("BinaryID %q, of the file %q", BinaryID(), id)
	}
	if other := computeBinaryID("/bin/sh"); other == id || other == "unknown" {
		t.Fatalf("/bin/sh: %q", other)
	}
}

// TestCleanupKeepsTheJournalOfAnExistingImage: the runtime directory of a
// dead server goes, except for a pending-allocation journal that holds
// entries while its image exists (the next attach replays it); without
// the image, or with an empty journal, all goes.
func TestCleanupKeepsTheJournalOfAnExistingImage(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		image   bool
		entries uint32
		kept    bool
	}{{true, 1, true}, {false, 1, false}, {true, 0, false}} {
		dir, rt := filepath.Join(t.TempDir(), "img"), t.TempDir()
		if c.image {
			if err := image.Create(dir, 1<<20, image.CreateOptions{ClusterSize: 64 << 10}); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(rt, journalName), journalBytes(c.entries), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{logName, socketName} {
			if err := os.WriteFile(filepath.Join(rt, name), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := removeRuntimeDir(rt, dir, log); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(rt)
		var left []string
		for _, e := range entries {
			left = append(left, e.Name())
		}
		want := []string(nil)
		if c.kept {
			want = []string{journalName}
		}
		if fmt.Sprint(left) != fmt.Sprint(want) {
			t.Errorf("%+v: left %v, want %v", c, left, want)
		}
	}
}

// journalBytes is a journal (pkg/image's layout) with n entries.
func journalBytes(n uint32) []byte {
	b := make([]byte, 128+12*4)
	copy(b, "PLOOPPAJ")
	le := binary.LittleEndian
	le.PutUint32(b[8:], 1)
	le.PutUint32(b[12:], 12)
	le.PutUint32(b[16:], 4)
	le.PutUint64(b[64:], 64<<10)
	le.PutUint32(b[72:], n)
	for i := range n {
		le.PutUint32(b[128+12*i:], i)
		le.PutUint32(b[132+12*i:], 1+i)
	}
	return b
}
