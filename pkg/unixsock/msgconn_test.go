package unixsock

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testMsg struct {
	N    int    `json:"n"`
	Text string `json:"text,omitempty"`
}

// tempFile makes a file whose content names it, so a received descriptor
// can be told apart from the others.
func tempFile(t *testing.T, name string) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(name), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func content(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The receiver reads late, so messages with and without files are
// coalesced in one read: the files must still come with their message.
func TestMsgConnFilesStayWithTheirMessage(t *testing.T) {
	a, bFile, err := MsgPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := FileMsgConn(bFile)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	want := map[int][]string{1: {"one"}, 3: {"three-a", "three-b"}, 6: {"six"}}
	for n := range 8 {
		var files []*os.File
		for _, name := range want[n] {
			files = append(files, tempFile(t, name))
		}
		text := ""
		if n == 4 {
			text = strings.Repeat("x", 100<<10) // longer than one read
		}
		if err := a.Send(testMsg{N: n, Text: text}, files...); err != nil {
			t.Fatal(err)
		}
	}
	a.Conn().CloseWrite()
	for n := range 8 {
		var m testMsg
		files, err := b.Recv(&m)
		if err != nil {
			t.Fatalf("message %d: %v", n, err)
		}
		if m.N != n {
			t.Fatalf("got message %d, want %d", m.N, n)
		}
		if len(files) != len(want[n]) {
			t.Fatalf("message %d: %d files, want %d", n, len(files), len(want[n]))
		}
		for i, f := range files {
			if got := content(t, f); got != want[n][i] {
				t.Errorf("message %d file %d is %q, want %q", n, i, got, want[n][i])
			}
			f.Close()
		}
	}
	var m testMsg
	if _, err := b.Recv(&m); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last message: %v, want EOF", err)
	}
}

func TestMsgConnRefusesTooManyFiles(t *testing.T) {
	a, bFile, err := MsgPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bFile.Close()
	files := make([]*os.File, MaxMsgFiles+1)
	for i := range files {
		files[i] = tempFile(t, "f")
	}
	if err := a.Send(testMsg{}, files...); err == nil {
		t.Fatal("sent more files than a message may carry")
	}
}

// TestMsgConnLeavesListenersNonBlocking: passing a listener obtained with
// net's File must not put it into blocking mode (the mode is shared by all
// duplicates): the listener's own Accept would then block for good.
func TestMsgConnLeavesListenersNonBlocking(t *testing.T) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "l.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, bFile, err := MsgPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer bFile.Close()
	if err := a.Send(testMsg{}, f); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() { _, err := ln.Accept(); accepted <- err }()
	time.Sleep(50 * time.Millisecond)
	go ln.Close() // must interrupt Accept (a blocking listener's Close hangs too)
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not interrupt Accept: the listener was left in blocking mode")
	}
}

// TestMsgConnCloseEndsRecv: Close returns while another goroutine waits in
// Recv, which then fails.
func TestMsgConnCloseEndsRecv(t *testing.T) {
	a, bFile, err := MsgPair()
	if err != nil {
		t.Fatal(err)
	}
	defer bFile.Close()
	got := make(chan error, 1)
	go func() { _, err := a.Recv(&testMsg{}); got <- err }()
	time.Sleep(20 * time.Millisecond)
	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a blocked Recv")
	}
	if err := <-got; err == nil {
		t.Fatal("Recv on a closed connection succeeded")
	}
}
