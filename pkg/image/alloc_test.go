package image

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// ioCount counts the reads and writes of one file.
type ioCount struct {
	reads, writes         int
	readBytes, writeBytes int64
	syncs                 int
}

// countFS is the real file system (so SEEK_DATA is the kernel's) counting
// the I/O of every file by base name.
type countFS struct {
	*OSFS
	mu     sync.Mutex
	counts map[string]*ioCount
}

func newCountFS() *countFS { return &countFS{OSFS: NewOSFS(true), counts: map[string]*ioCount{}} }

func (c *countFS) Open(path string, writable bool) (File, error) {
	f, err := c.OSFS.Open(path, writable)
	if err != nil {
		return nil, err
	}
	return &countFile{File: f, fs: c, name: filepath.Base(path)}, nil
}

func (c *countFS) count(name string, fn func(*ioCount)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts[name] == nil {
		c.counts[name] = &ioCount{}
	}
	fn(c.counts[name])
}

// take returns and resets the counts of name.
func (c *countFS) take(name string) ioCount {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.counts[name]
	delete(c.counts, name)
	if n == nil {
		return ioCount{}
	}
	return *n
}

type countFile struct {
	File
	fs   *countFS
	name string
}

func (f *countFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.count(f.name, func(c *ioCount) { c.reads++; c.readBytes += int64(len(p)) })
	return f.File.ReadAt(p, off)
}

func (f *countFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.count(f.name, func(c *ioCount) { c.writes++; c.writeBytes += int64(len(p)) })
	return f.File.WriteAt(p, off)
}

func (f *countFile) Sync() error {
	f.fs.count(f.name, func(c *ioCount) { c.syncs++ })
	return f.File.Sync()
}

// copyUpImage makes an image of cs-byte clusters, lets prepare write into
// it, snapshots it, and returns the open image and the base names of the
// frozen and the new top delta.
func copyUpImage(t *testing.T, fsys *countFS, cs int64, prepare func(c *Chain)) (*Image, string, string) {
	t.Helper()
	dir := t.TempDir()
	if err := Create(dir, 8<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	prepare(img.Chain())
	if _, err := img.Snapshot(SnapshotOptions{NewDeltaFile: "top.hds"}); err != nil {
		t.Fatal(err)
	}
	fsys.take(RootDeltaFile)
	fsys.take("top.hds")
	return img, RootDeltaFile, "top.hds"
}

func TestCopyUp(t *testing.T) {
	const k = 1 << 10
	for _, tc := range []struct {
		name     string
		cs       int64
		lower    string // cluster 1 of the frozen delta: full, sparse (data in [4K, 8K) only) or hole
		off      int64  // write at cs+off
		n        int
		reads    int   // reads of the frozen delta
		maxRead  int64 // bytes read from it at most
		writes   int   // writes to the top delta (data only; BAT at the flush)
		maxWrite int64
	}{
		// 4 KiB in the middle: one read around it (the gap is small), one write.
		{"partial", 64 * k, "full", 20 * k, 4096, 1, 64 * k, 1, 64 * k},
		{"partial 1M", 1024 * k, "full", 500 * k, 4096, 1, 1024 * k, 1, 1024 * k},
		// Half the cluster: the uncovered ends are read apart (the gap is
		// larger than copyGap) and written in one go with the new data.
		{"large partial", 1024 * k, "full", 256 * k, 512 * k, 2, 512 * k, 1, 1024 * k},
		{"whole cluster", 64 * k, "full", 0, 64 * k, 0, 0, 1, 64 * k},
		// Only the lower data in [4K, 8K) is read. A 64 KiB cluster is
		// written whole; in a 1 MiB one the copied data goes out with the
		// zeros before it (near the start) and the new data alone.
		{"over lower hole", 64 * k, "sparse", 40 * k, 4096, 1, 4096, 1, 64 * k},
		{"over lower hole 1M", 1024 * k, "sparse", 900 * k, 4096, 1, 4096, 2, 12 * k},
		{"lower all hole", 64 * k, "hole", 40 * k, 4096, 0, 0, 1, 64 * k},
		{"lower all hole 1M", 1024 * k, "hole", 500 * k, 4096, 0, 0, 1, 4 * k},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := tc.cs
			fsys := newCountFS()
			want := make([]byte, cs)
			img, frozen, top := copyUpImage(t, fsys, cs, func(c *Chain) {
				mustWrite(t, c, 0, pattern(9, int(cs))) // cluster 0: no part of the test
				switch tc.lower {
				case "full":
					copy(want, pattern(1, int(cs)))
					mustWrite(t, c, cs, want)
				case "sparse": // written whole, then all but [4K, 8K) punched
					copy(want[4096:], pattern(2, 4096))
					mustWrite(t, c, cs, want)
					if c.Discard(cs, 4096) != nil || c.Discard(cs+8192, cs-8192) != nil {
						t.Fatal("discard")
					}
				case "hole": // allocated, then all punched
					mustWrite(t, c, cs, pattern(3, int(cs)))
					if err := c.Discard(cs, cs); err != nil {
						t.Fatal(err)
					}
				}
			})
			c := img.Chain()
			p := pattern(7, tc.n)
			copy(want[tc.off:], p)
			mustWrite(t, c, cs+tc.off, p)
			r, w := fsys.take(frozen), fsys.take(top)
			if r.reads != tc.reads || r.readBytes > tc.maxRead {
				t.Errorf("frozen delta: %d reads, %d bytes; want %d reads, at most %d bytes", r.reads, r.readBytes, tc.reads, tc.maxRead)
			}
			if w.writes != tc.writes || w.writeBytes > tc.maxWrite || w.syncs != 0 {
				t.Errorf("top delta: %d writes, %d bytes, %d syncs; want %d writes, at most %d bytes, no sync",
					w.writes, w.writeBytes, w.syncs, tc.writes, tc.maxWrite)
			}
			if got := mustRead(t, c, cs, int(cs)); !bytes.Equal(got, want) {
				t.Fatal("cluster content wrong after copy-up")
			}
			if got := mustRead(t, c, 0, int(cs)); !bytes.Equal(got, pattern(9, int(cs))) {
				t.Fatal("neighbouring cluster changed")
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			dir := img.Dir
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if r, err := Check(dir, false); err != nil || !r.Clean() {
				t.Fatalf("check: %v %+v", err, r)
			}
		})
	}
}

// A write over several whole clusters of a lower delta reads nothing.
func TestCopyUpSkippedForWholeClusters(t *testing.T) {
	const cs = 64 << 10
	fsys := newCountFS()
	img, frozen, _ := copyUpImage(t, fsys, cs, func(c *Chain) { mustWrite(t, c, 0, pattern(1, 8*cs)) })
	p := pattern(2, 4*cs)
	mustWrite(t, img.Chain(), 2*cs, p)
	if r := fsys.take(frozen); r.reads != 0 {
		t.Fatalf("%d reads of the frozen delta for whole-cluster writes", r.reads)
	}
	want := pattern(1, 8*cs)
	copy(want[2*cs:], p)
	if got := mustRead(t, img.Chain(), 0, 8*cs); !bytes.Equal(got, want) {
		t.Fatal("content wrong")
	}
}

// TestGroupCommit: allocating writes do not sync; a flush syncs the data,
// writes the BAT, syncs again; concurrent flushes share commits; pending
// entries survive Grow, Snapshot, Discard and Close.
func TestGroupCommit(t *testing.T) {
	const cs = 64 << 10
	fsys := newCountFS()
	dir := t.TempDir()
	if err := Create(dir, 64<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	c := img.Chain()
	fsys.take(RootDeltaFile)
	model := make([]byte, 128<<20)
	write := func(off int64, p []byte) {
		mustWrite(t, c, off, p)
		copy(model[off:], p)
	}
	for i := range 16 {
		write(int64(i)*cs*3+100, pattern(byte(i), 5000))
	}
	if n := fsys.take(RootDeltaFile); n.syncs != 0 {
		t.Fatalf("%d syncs for 16 allocating writes before any flush", n.syncs)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := fsys.take(RootDeltaFile); n.syncs != 2 || n.writes != 1 {
		t.Fatalf("flush: %d syncs, %d writes; want data sync, one BAT write, sync", n.syncs, n.writes)
	}
	// 8 writers, each flushing after every allocation: fewer commits than
	// flushes.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 20 {
				off := int64(200+w*20+k) * cs
				p := pattern(byte(w*20+k), 4096)
				if _, err := c.WriteAt(p, off); err != nil {
					t.Error(err)
					return
				}
				copy(model[off:], p) // disjoint ranges
				if err := c.Flush(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := fsys.take(RootDeltaFile); n.syncs >= 2*160 {
		t.Errorf("%d syncs for 160 concurrent flushes: commits were not shared", n.syncs)
	} else {
		t.Logf("160 concurrent flushes: %d syncs", n.syncs)
	}
	// Pending entries (no flush) across grow, discard, snapshot and close.
	write(40*cs, pattern(50, cs))
	if err := img.Grow(128 << 20); err != nil {
		t.Fatal(err)
	}
	write(100<<20, pattern(51, 3*cs))
	write(41*cs, pattern(52, cs))
	if err := c.Discard(41*cs+4096, 8192); err != nil {
		t.Fatal(err)
	}
	clear(model[41*cs+4096 : 41*cs+4096+8192])
	if _, err := img.Snapshot(SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	write(40*cs+10, pattern(53, 100))
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Check(dir, false); err != nil || !r.Clean() {
		t.Fatalf("check: %v %+v", err, r)
	}
	img, err = OpenDir(dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := mustRead(t, img.Chain(), 0, len(model)); !bytes.Equal(got, model) {
		t.Fatal("content after reopen differs")
	}
}

// TestRecoveryReclaimsLeakedClusters: clusters a crash left without BAT
// entries, in the middle of the file, are punched when the dirty image is
// opened, and reused by the next allocations instead of growing the file.
func TestRecoveryReclaimsLeakedClusters(t *testing.T) {
	const cs = 64 << 10
	dir := t.TempDir()
	if err := Create(dir, 64<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, 0, pattern(1, 8*cs))
	// The crash: entries 2..5 never reached the BAT, the mark is still set.
	path := filepath.Join(dir, RootDeltaFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for vc := uint32(2); vc < 6; vc++ {
		putEntry(f, vc, 0)
	}
	h, _ := ReadHeader(path)
	h.InUse = true
	f.WriteAt(h.Encode(), 0)
	f.Close()
	before, _ := AllocatedBytes(path)
	st, _ := os.Stat(path)
	r, err := Check(dir, false)
	if err != nil || !r.OK() || r.Clean() {
		t.Fatalf("check of the crashed image: %v %+v", err, r)
	}
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// st_blocks counts ext4's extent tree too: the punch splits the file's
	// extents and may cost one index block (4 KiB) when the file system
	// laid it out in more pieces than the inode holds (a busy disk).
	if after, _ := AllocatedBytes(path); after > before-4*cs+4096 {
		t.Fatalf("allocated %d -> %d bytes: leaked clusters not punched", before, after)
	}
	for i := range 4 {
		mustWrite(t, img.Chain(), int64(20+i)*cs, pattern(byte(10+i), cs))
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(path); st2.Size() != st.Size() {
		t.Fatalf("file grew from %d to %d bytes: the leaked clusters were not reused", st.Size(), st2.Size())
	}
	if r, err := Check(dir, false); err != nil || !r.Clean() {
		t.Fatalf("check: %v %+v", err, r)
	}
	want := pattern(1, 8*cs)
	clear(want[2*cs : 6*cs])
	got := readDir(t, dir, 24*cs)
	if !bytes.Equal(got[:8*cs], want) {
		t.Fatal("surviving clusters changed")
	}
	for i := range 4 {
		if !bytes.Equal(got[(20+i)*cs:(21+i)*cs], pattern(byte(10+i), cs)) {
			t.Fatal(fmt.Sprintf("cluster %d written into a reused slot reads wrong", 20+i))
		}
	}
}

// TestContiguousClustersOneRequest: an I/O over clusters that lie one after
// the other in one delta's file is one read or write of that file, however
// many clusters it spans; where the layout breaks, it splits.
func TestContiguousClustersOneRequest(t *testing.T) {
	const cs = 64 << 10
	fsys := newCountFS()
	img, frozen, top := copyUpImage(t, fsys, cs, func(c *Chain) {
		mustWrite(t, c, 0, pattern(1, 32*cs)) // clusters 0..31 in file order
	})
	c := img.Chain()
	mustWrite(t, c, 16*cs, pattern(2, 16*cs)) // whole clusters: allocated, nothing copied
	fsys.take(top)
	fsys.take(frozen)
	p := pattern(3, 16*cs)
	mustWrite(t, c, 16*cs, p) // overwrite of 16 contiguous top clusters
	if w := fsys.take(top); w.writes != 1 {
		t.Errorf("1 MiB overwrite of contiguous clusters: %d writes, want 1", w.writes)
	}
	got := mustRead(t, c, 8*cs, 16*cs) // 8 clusters below, 8 in the top
	if r, w := fsys.take(frozen), fsys.take(top); r.reads != 1 || w.reads != 1 {
		t.Errorf("read across two deltas: %d + %d reads, want 1 + 1", r.reads, w.reads)
	}
	want := append(pattern(1, 32*cs)[8*cs:16*cs], p[:8*cs]...)
	if !bytes.Equal(got, want) {
		t.Fatal("read across two deltas returns wrong data")
	}
	if got := mustRead(t, c, 40*cs, 2*cs); !allZero(got) {
		t.Fatal("unallocated clusters do not read as zeros")
	}
}
