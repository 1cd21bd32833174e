package iocheck

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWriterVerifies runs the writer on a plain file and then corrupts a
// written block: the final verification must report it.
func TestWriterVerifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	w, err := Start(Options{Path: path, Size: 1 << 20, SyncEvery: 16})
	if err != nil {
		t.Skipf("O_DIRECT on the temp dir: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	r := w.Snapshot()
	if r.Writes == 0 || !r.OK() {
		t.Fatalf("while running: %v (%s %s)", r, r.FirstIOError, r.FirstVerifyError)
	}
	w.stop.Store(true)
	w.wg.Wait()
	// Corrupt the first written block behind the writer's back.
	for b := range w.gens {
		if w.gens[b].Load() == 0 {
			continue
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{0xff}, int64(b)*4096+100)
		f.Close()
		break
	}
	r = w.Stop()
	if r.VerifyErrors != 1 {
		t.Fatalf("corrupted block not found: %v", r)
	}
}
