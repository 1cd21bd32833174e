package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fileRec is a file the test wrote: its name and content.
type fileRec struct {
	name string
	data []byte
}

func randomBytes(n int) []byte {
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rand.Uint32())
	}
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seed).Read(b)
	return b
}

// writeDurable writes a new file, fsyncs it and its directory.
func writeDurable(dir, name string, data []byte) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeFiles writes n files of random content named prefix-NNN.
func writeFiles(t *testing.T, dir, prefix string, n, size int) []fileRec {
	t.Helper()
	var out []fileRec
	for i := range n {
		rec := fileRec{name: fmt.Sprintf("%s-%03d", prefix, i), data: randomBytes(size)}
		if err := writeDurable(dir, rec.name, rec.data); err != nil {
			t.Fatalf("write %s: %v", rec.name, err)
		}
		out = append(out, rec)
	}
	return out
}

// checkFiles verifies every file by sha256 of its content.
func checkFiles(t *testing.T, dir string, files []fileRec) {
	t.Helper()
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			t.Errorf("%s: %v", dir, err)
			continue
		}
		if sha256.Sum256(got) != sha256.Sum256(f.data) {
			t.Errorf("%s/%s: content differs (%d bytes, want %d)", dir, f.name, len(got), len(f.data))
		}
	}
}

// writer keeps writing and fsyncing files until stopped; every write must succeed.
type writer struct {
	dir     string
	mu      sync.Mutex
	done    []fileRec // completed (fsynced) files, in order
	started int       // files begun
	err     error
	stop    chan struct{}
	exited  chan struct{}
}

const writerFileSize = 64 << 10

func startWriter(dir string) *writer {
	w := &writer{dir: dir, stop: make(chan struct{}), exited: make(chan struct{})}
	go w.run()
	return w
}

func writerName(i int) string { return fmt.Sprintf("w-%05d", i) }

func (w *writer) run() {
	defer close(w.exited)
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		rec := fileRec{name: writerName(i), data: randomBytes(writerFileSize)}
		w.mu.Lock()
		w.started = i + 1
		w.mu.Unlock()
		err := writeDurable(w.dir, rec.name, rec.data)
		w.mu.Lock()
		if err != nil {
			w.err = fmt.Errorf("write %s: %w", rec.name, err)
			w.mu.Unlock()
			return
		}
		w.done = append(w.done, rec)
		w.mu.Unlock()
	}
}

// counts returns completed and started file counts.
func (w *writer) counts() (done, started int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.done), w.started, w.err
}

// waitDone waits until n files are complete (generous deadline, not a timing check).
func (w *writer) waitDone(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		done, _, err := w.counts()
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
		if done >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("writer completed %d of %d files in 2 minutes", done, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *writer) finish(t *testing.T) []fileRec {
	t.Helper()
	close(w.stop)
	<-w.exited
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
	return w.done
}

// checkSnapshotFiles verifies a restored snapshot of the writer's directory:
// the files present are a prefix of the write order, all complete except maybe
// the last (whose content is then a prefix of what was written), every file
// completed before the snapshot call is there and none begun after it returned.
func checkSnapshotFiles(t *testing.T, dir string, all []fileRec, completedBefore, startedAfter int) int {
	t.Helper()
	present := -1
	for i := range all {
		if _, err := os.Stat(filepath.Join(dir, writerName(i))); err == nil {
			present = i
		}
	}
	if present+1 < completedBefore {
		t.Errorf("snapshot holds writer files up to %d; %d were complete before the call", present, completedBefore)
	}
	if present >= startedAfter {
		t.Errorf("snapshot holds writer file %d, begun after the call returned (%d begun)", present, startedAfter)
	}
	checkFiles(t, dir, all[:max(present, 0)])
	if present >= 0 {
		got, err := os.ReadFile(filepath.Join(dir, writerName(present)))
		if err != nil || !bytes.HasPrefix(all[present].data, got) {
			t.Errorf("last snapshot file %d: %d bytes, not a prefix of what was written (%v)", present, len(got), err)
		}
	}
	return present + 1
}

// writeStream writes size bytes of random data to a new file in 1 MiB
// writes, fsyncs, and returns its sha256.
func writeStream(t *testing.T, path string, size int64) [32]byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	src := io.LimitReader(rand.NewChaCha8([32]byte{7}), size)
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), src, make([]byte, 1<<20)); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	return [32]byte(h.Sum(nil))
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return [32]byte(h.Sum(nil))
}

// blockWrite writes data at off of a block device node and fsyncs it.
func blockWrite(t *testing.T, dev string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %s at %d: %v", dev, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dev, err)
	}
}

func blockRead(t *testing.T, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", dev, off, err)
	}
	return b
}
