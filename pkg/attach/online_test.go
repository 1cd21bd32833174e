package attach_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// written is a file the writer completed (fsynced) and its hash.
type written struct {
	name string
	sum  [32]byte
}

// loadWriter writes and fsyncs files until stopped, recording each one
// only after its fsync returned.
type loadWriter struct {
	mu    sync.Mutex
	files []written
	err   error
}

func (w *loadWriter) run(ctx context.Context, dir string) {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("w%05d", i)
		size := 64<<10 + (i*7919)%(1<<20)
		sum, err := writeRandom(filepath.Join(dir, name), size, uint64(i)+100)
		w.mu.Lock()
		if err != nil {
			w.err = fmt.Errorf("write %s: %w", name, err)
			w.mu.Unlock()
			return
		}
		w.files = append(w.files, written{name, sum})
		w.mu.Unlock()
	}
}

// startLoad runs a loadWriter on dir until stop, which waits for it to
// end and returns its error.
func startLoad(dir string) (w *loadWriter, stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	w = &loadWriter{}
	ended := make(chan struct{})
	go func() { defer close(ended); w.run(ctx, dir) }()
	return w, func() error { cancel(); <-ended; return w.err }
}

func (w *loadWriter) done() []written {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]written(nil), w.files...)
}

// TestOnlineSnapshotUnderLoad: five snapshots while a writer fsyncs files;
// no write fails, every snapshot is a clean filesystem holding every file
// completed before it, and the live volume is intact afterwards.
func TestOnlineSnapshotUnderLoad(t *testing.T) {
	needTools(t, "mkfs.ext4", "fsck.ext4")
	f := newFixture(t, 512<<20)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	mp := f.mount(dev, "ext4")

	w, stop := startLoad(mp)
	type shot struct {
		guid   string
		before []written
	}
	var shots []shot
	for i := range 5 {
		time.Sleep(300 * time.Millisecond)
		before := w.done()
		start := time.Now()
		guid, err := f.c.Snapshot(f.ctx(), f.dir, "")
		if err != nil {
			stop()
			t.Fatalf("snapshot %d: %v", i, err)
		}
		t.Logf("snapshot %d: %s in %v, %d files before", i, guid, time.Since(start), len(before))
		shots = append(shots, shot{guid, before})
	}
	time.Sleep(300 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if st := f.status(); st.Depth != 6 {
		t.Fatalf("depth %d after 5 snapshots, want 6", st.Depth)
	}
	for i, s := range shots {
		checkSnapshot(t, f, i, s.guid, s.before)
	}
	for _, file := range w.done() {
		verifyFile(t, filepath.Join(mp, file.name), file.sum)
	}
	t.Logf("live volume verified: %d files", len(w.done()))
}

// checkSnapshot exports snapshot guid to a raw file, runs fsck.ext4 -n on
// it, mounts it read-only and verifies the files completed before it.
func checkSnapshot(t *testing.T, f *fixture, i int, guid string, files []written) {
	t.Helper()
	raw := filepath.Join(f.work, fmt.Sprintf("snap%d.raw", i))
	defer os.Remove(raw)
	chain, err := image.OpenSnapshot(f.dir, guid)
	if err != nil {
		t.Fatalf("open snapshot %s: %v", guid, err)
	}
	err = image.Export(chain, raw)
	chain.Close()
	if err != nil {
		t.Fatalf("export %s: %v", guid, err)
	}
	testhelp.Run(t, "fsck.ext4", "-n", "-f", raw)
	d, err := loopdev.Attach(f.ctx(), raw, loopdev.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer loopdev.Detach(d.Path)
	mp := f.mount(d.Path, "ext4", "ro", "noload")
	defer unmountQuiet(mp)
	for _, file := range files {
		verifyFile(t, filepath.Join(mp, file.name), file.sum)
	}
}

// TestOldClientSnapshotIsFrozenByTheServer: a driver from before protocol
// version 2 does not freeze the filesystem itself; the server, which sees
// the mount here, freezes it as it used to, so the snapshot is clean.
func TestOldClientSnapshotIsFrozenByTheServer(t *testing.T) {
	needTools(t, "mkfs.ext4", "fsck.ext4")
	f := newFixture(t, 256<<20)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	mp := f.mount(dev, "ext4")
	w, stop := startLoad(mp)
	time.Sleep(300 * time.Millisecond)
	before := w.done()
	conn, err := net.Dial("unix", filepath.Join(attach.RuntimeDir(theSuite.runDir, f.dir), "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
		GUID  string `json:"guid"`
	}
	_, err = conn.Write([]byte(`{"v":1,"op":"snapshot"}` + "\n"))
	if err == nil {
		err = json.NewDecoder(conn).Decode(&resp)
	}
	conn.Close()
	werr := stop()
	if err != nil || !resp.OK {
		t.Fatalf("snapshot of a version 1 client: %v %+v", err, resp)
	}
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	checkSnapshot(t, f, 0, resp.GUID, before)
}
