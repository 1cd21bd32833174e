package blockmap

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lockedBuffer collects log output written from server goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The settings that make loop-on-FUSE fast must really be negotiated; a
// go-fuse upgrade could silently drop them.
func TestMountTuning(t *testing.T) {
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{Debug: true, Logger: logger})
	f := openFile(t, s)
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}

	var initReply, openReply string
	for _, line := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(line, "Wr 1048576"):
			initReply = line
		case strings.Contains(line, "PARALLEL_DIRECT_WRITES"):
			openReply = line
		}
	}
	if !strings.Contains(initReply, "ASYNC_DIO") || !strings.Contains(initReply, "MaxPages 256") {
		t.Errorf("INIT reply lacks ASYNC_DIO, 1 MiB writes or 256 pages: %q", initReply)
	}
	if !strings.Contains(openReply, "DIRECT,") {
		t.Errorf("OPEN reply lacks DIRECT_IO|PARALLEL_DIRECT_WRITES: %q", openReply)
	}

	if err := mountFusectl(); err != nil {
		t.Fatal(err)
	}
	conn := filepath.Join(fusectlDir, strconv.FormatUint(s.connDev, 10))
	b, err := os.ReadFile(filepath.Join(conn, "max_background"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(DefaultMaxBackground) {
		t.Errorf("max_background = %q, %v; want %d", b, err, DefaultMaxBackground)
	}
}
