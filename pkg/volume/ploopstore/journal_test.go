package ploopstore_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
	"github.com/csi-ploop/csi-ploop/pkg/volume/ploopstore"
)

// processFS is the file system as a serving process sees it: the files it
// opened are closed by the kernel when it dies (die).
type processFS struct {
	image.FS
	mu    sync.Mutex
	files []image.File
}

func (p *processFS) Open(path string, writable bool) (image.File, error) {
	f, err := p.FS.Open(path, writable)
	if err == nil {
		p.mu.Lock()
		p.files = append(p.files, f)
		p.mu.Unlock()
	}
	return f, err
}

func (p *processFS) die() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.files {
		_ = f.Close() // some the process closed itself
	}
	p.files = nil
}

// serveAndDie plays a serving process of image directory dir (runtime
// directories under runDir) that acknowledges allocating writes of 4 KiB at
// offs, never flushes them, and dies: its chain is abandoned, its files
// and journal mapping let go. It returns what it wrote, by offset.
func serveAndDie(t *testing.T, runDir, dir string, offs []int64) map[int64][]byte {
	t.Helper()
	jpath, err := attach.JournalPath(runDir, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(jpath), 0o700); err != nil {
		t.Fatal(err)
	}
	j, err := image.OpenPendingJournal(jpath, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	fsys := &processFS{FS: image.NewOSFS(true)}
	t.Cleanup(fsys.die) // the chain is never closed: let its files go even if the test fails early
	c, err := image.OpenChain(chainOf(t, dir), image.ChainOptions{FS: fsys, Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	written := map[int64][]byte{}
	for i, off := range offs {
		p := fill(byte(40+i), 4096)
		if _, err := c.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		written[off] = p
	}
	fsys.die()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := image.DecodeJournal(b); err != nil || int(h.Count) != len(offs) {
		t.Fatalf("the dead server's journal holds %d entries (%v), want %d", h.Count, err, len(offs))
	}
	return written
}

// TestMergeDirKeepsDeadServersWrites: a serving process died with
// allocating writes to the top acknowledged but not committed (in the
// page cache, and in its journal in the runtime directory). An offline
// Store.MergeDir of the newest snapshot with the top must replay that
// journal first: merged down, the copy goes by the top's on-disk BAT and
// the journal, bound to a top that is then gone, is ignored afterwards;
// merged up, the recovery of the dirty top punches those clusters as
// leaked. Either way the writes would be lost.
func TestMergeDirKeepsDeadServersWrites(t *testing.T) {
	const cs = 64 << 10
	for _, direction := range []volume.MergeDirection{volume.MergeDirection(image.MergeDown), volume.MergeDirection(image.MergeUp)} {
		t.Run(string(direction), func(t *testing.T) {
			ctx := context.Background()
			runDir, dir := t.TempDir(), filepath.Join(t.TempDir(), "img")
			if err := image.Create(dir, 128<<20, image.CreateOptions{ClusterSize: cs}); err != nil {
				t.Fatal(err)
			}
			writeVol(t, dir, 0, fill(1, 8*cs))
			if _, err := image.SnapshotDir(dir, image.SnapshotOptions{}); err != nil {
				t.Fatal(err)
			}
			// Fresh clusters, a partial one over the snapshot's data (a
			// copy-up), one in another BAT page.
			written := serveAndDie(t, runDir, dir, []int64{20 * cs, 21*cs + 8192, 2*cs + 4096, 1500 * cs})
			want := readVol(t, dir, 8*cs) // the snapshot's data as the image shows it
			for off, p := range written {
				if off < 8*cs {
					copy(want[off:], p)
				}
			}
			files := chainOf(t, dir)
			res, err := ploopstore.New(runDir).MergeDir(ctx, dir, volume.MergeRequest{Parent: files[0], Child: files[1], Direction: direction})
			if err != nil {
				t.Fatal(err)
			}
			if res.Direction != direction || len(chainOf(t, dir)) != 1 {
				t.Fatalf("merged %s into the chain %v, want %s into one delta", res.Direction, chainOf(t, dir), direction)
			}
			img, err := image.OpenDir(dir, image.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			got := make([]byte, 4096)
			lost := 0
			for off, p := range written {
				if _, err := img.Chain().ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, p) {
					lost++
				}
			}
			if lost > 0 {
				t.Fatalf("%d of %d acknowledged writes of the dead server lost by the merge", lost, len(written))
			}
			all := make([]byte, 8*cs)
			if _, err := img.Chain().ReadAt(all, 0); err != nil || !bytes.Equal(all, want) {
				t.Fatalf("the snapshot's data changed (%v)", err)
			}
			if r, err := image.Check(dir, false); err != nil || !r.Clean() {
				t.Fatalf("check after the merge: %v %+v", err, r)
			}
			// Replayed once: nothing left for the next attach to apply.
			jpath, _ := attach.JournalPath(runDir, dir)
			if b, err := os.ReadFile(jpath); err == nil {
				if h, _, err := image.DecodeJournal(b); err != nil || h.Count != 0 {
					t.Fatalf("the journal after the merge holds %d entries (%v)", h.Count, err)
				}
			}
		})
	}
}
