package image

// Interoperability with QEMU's parallels driver (Debian's qemu-utils), the
// reference reader and writer for a single ploop v2 delta. Every test runs
// with 1 MiB and 64 KiB clusters. Without qemu-img/qemu-io the tests are
// skipped, unless CSI_PLOOP_REQUIRE_TOOLS=1 (CI), which makes them fail.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var interopClusterSizes = []struct {
	name     string
	cs       int64
	qemuOpts []string // extra qemu-img create arguments
}{
	{"1MiB", 1 << 20, nil},
	{"64KiB", 64 << 10, []string{"-o", "cluster_size=64k"}},
}

// interopRequireTools skips the test (or fails it in CI) when QEMU's tools are missing.
func interopRequireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CSI_PLOOP_REQUIRE_TOOLS") == "1" {
				t.Fatalf("%s not found and CSI_PLOOP_REQUIRE_TOOLS=1: %v", tool, err)
			}
			t.Skipf("%s not found (apt-get install qemu-utils): %v", tool, err)
		}
	}
}

func interopRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// interopQemuCheck runs qemu-img check on one delta: it must exit 0 and
// report no leak, corruption or unclean shutdown.
func interopQemuCheck(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "-f", "parallels", path).CombinedOutput()
	low := strings.ToLower(string(out))
	if err != nil || strings.Contains(low, "leak") || strings.Contains(low, "corrupt") ||
		strings.Contains(string(out), "ERROR") || strings.Contains(low, "not closed") {
		t.Fatalf("qemu-img check -f parallels %s: %v\n%s", filepath.Base(path), err, out)
	}
}

// interopQemuConvert converts one delta to a raw file with qemu-img.
func interopQemuConvert(t *testing.T, src, dst string) {
	t.Helper()
	interopRun(t, "qemu-img", "convert", "-f", "parallels", "-O", "raw", src, dst)
}

// interopExport exports the chain of delta files (bottom..top) to a raw file.
func interopExport(t *testing.T, files []string, dst string) int64 {
	t.Helper()
	c, err := OpenChain(files, ChainOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("OpenChain %v: %v", files, err)
	}
	defer c.Close()
	if err := Export(c, dst); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return c.Size()
}

// interopNextData returns the first data offset at or after off, MaxInt64 if
// only a hole follows; without SEEK_DATA everything counts as data.
func interopNextData(f *os.File, off int64) int64 {
	d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return math.MaxInt64
	}
	if err != nil {
		return off
	}
	return d
}

// interopCompareFiles fails unless both files are size bytes long with equal
// content. Ranges that are holes in both files are skipped, so a sparse
// multi-GiB disk compares quickly.
func interopCompareFiles(t *testing.T, a, b string, size int64) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	for _, f := range []*os.File{fa, fb} {
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != size {
			t.Fatalf("%s is %d bytes, want %d", filepath.Base(f.Name()), st.Size(), size)
		}
	}
	const chunk = 1 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		next := min(interopNextData(fa, off), interopNextData(fb, off))
		if next >= size {
			break
		}
		off = next / chunk * chunk
		n := int(min(chunk, size-off))
		if _, err := fa.ReadAt(ba[:n], off); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			i := 0
			for ba[i] == bb[i] {
				i++
			}
			t.Fatalf("%s and %s differ first at byte %d: %#x vs %#x",
				filepath.Base(a), filepath.Base(b), off+int64(i), ba[i], bb[i])
		}
	}
}

// interopModel is the expected content of a virtual disk, kept as a sparse
// raw file; every operation on the image is applied to it too.
type interopModel struct {
	t *testing.T
	f *os.File
}

func newInteropModel(t *testing.T, path string, size int64) *interopModel {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return &interopModel{t: t, f: f}
}

func (m *interopModel) write(p []byte, off int64) {
	if _, err := m.f.WriteAt(p, off); err != nil {
		m.t.Fatal(err)
	}
}

func (m *interopModel) zero(off, n int64) { m.write(make([]byte, n), off) }

func (m *interopModel) grow(size int64) {
	if err := m.f.Truncate(size); err != nil {
		m.t.Fatal(err)
	}
}

func (m *interopModel) path() string { return m.f.Name() }

func interopRandBytes(r *rand.Rand, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestInteropImportQemuReads: a raw file with data, holes and explicit zero
// regions (size not even a multiple of 512) imported by us passes qemu-img
// check, and qemu-img convert gives back the raw bytes zero-padded to the
// image size. Clusters that were holes or zeros stay unallocated.
func TestInteropImportQemuReads(t *testing.T) {
	interopRequireTools(t)
	for _, tc := range interopClusterSizes {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			r := rand.New(rand.NewPCG(1, uint64(tc.cs)))
			const MiB = 1 << 20
			rawSize := int64(24*MiB + 12345)
			raw := filepath.Join(tmp, "disk.raw")
			f, err := os.Create(raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(rawSize); err != nil { // all holes to start with
				t.Fatal(err)
			}
			regions := []struct {
				off, n int64
				zeros  bool
			}{
				{0, 3 * MiB, false},
				// [3 MiB, 5 MiB): hole
				{5 * MiB, 2 * MiB, true},
				{7*MiB + 777, 3000, false}, // data inside an otherwise empty cluster
				{8*MiB + 123, 2*MiB + 4444, false},
				{10*MiB + 4567, 2*MiB - 4567, true},
				// [12 MiB, 20 MiB): hole
				{20 * MiB, 5000, true},
				{20*MiB + 5000, 300, false},
				{rawSize - 12345 - 4096, 12345 + 4096, false}, // up to the unaligned end
			}
			for _, rg := range regions {
				p := make([]byte, rg.n)
				if !rg.zeros {
					p = interopRandBytes(r, rg.n)
				}
				if _, err := f.WriteAt(p, rg.off); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}

			dir := filepath.Join(tmp, "img")
			if err := Import(raw, dir, CreateOptions{ClusterSize: tc.cs}); err != nil {
				t.Fatalf("Import: %v", err)
			}
			files := mustFiles(t, dir)
			if len(files) != 1 {
				t.Fatalf("imported chain %v, want one delta", files)
			}
			size := (rawSize + SectorSize - 1) / SectorSize * SectorSize

			c, err := OpenChain(files, ChainOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if c.Size() != size {
				t.Fatalf("image size %d, want %d", c.Size(), size)
			}
			for _, hole := range [][2]int64{{3 * MiB, 5 * MiB}, {5 * MiB, 7 * MiB}, {12 * MiB, 20 * MiB}} {
				for vc := (hole[0] + tc.cs - 1) / tc.cs; (vc+1)*tc.cs <= hole[1]; vc++ {
					if c.allocated(uint32(vc)) {
						t.Errorf("cluster %d (a hole or zeros in the raw file) was allocated", vc)
					}
				}
			}
			c.Close()

			interopQemuCheck(t, files[0])
			if r, err := Check(files[0], false); err != nil || !r.Clean() {
				t.Fatalf("Check: %v %+v", err, r)
			}
			if err := os.Truncate(raw, size); err != nil { // zero padding to the image size
				t.Fatal(err)
			}
			qraw := filepath.Join(tmp, "qemu.raw")
			interopQemuConvert(t, files[0], qraw)
			interopCompareFiles(t, raw, qraw, size)
			ours := filepath.Join(tmp, "ours.raw")
			interopExport(t, files, ours)
			interopCompareFiles(t, raw, ours, size)
		})
	}
}

// TestInteropQemuWritesWeRead: an image created by qemu-img and written by
// qemu-io (partial clusters, cluster-crossing and unaligned writes, an
// overwrite, zero writes, the last bytes of the disk) reads back through our
// Chain exactly as qemu-img convert and the expected model say, and our Check
// finds nothing to say about it.
func TestInteropQemuWritesWeRead(t *testing.T) {
	interopRequireTools(t)
	for _, tc := range interopClusterSizes {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			size := int64(100<<20 + 1536) // not a whole number of clusters
			hds := filepath.Join(tmp, "f.hds")
			args := append([]string{"create", "-f", "parallels"}, tc.qemuOpts...)
			interopRun(t, "qemu-img", append(args, hds, fmt.Sprint(size))...)
			model := newInteropModel(t, filepath.Join(tmp, "model.raw"), size)

			cs := tc.cs
			writes := []struct {
				pattern byte
				off, n  int64
			}{
				{0xab, 0, 4096},
				{0xab, 3*cs + 100, 2*cs + 5000}, // spans three clusters, unaligned both ends
				{0xcd, 1<<20 - 512, 1024},       // crosses the 1 MiB boundary
				{0x11, 50<<20 + 12345, 777},     // inside one cluster, not sector aligned
				{0x22, 3*cs + 50, 200},          // overwrite part of an earlier write
				{0x00, 3*cs + 4096, 8192},       // zeros over data
				{0x33, 80 << 20, 2 * cs},        // whole clusters
				{0x44, size - 3000, 3000},       // the end of the disk
			}
			var qargs []string
			for _, w := range writes {
				qargs = append(qargs, "-c", fmt.Sprintf("write -P %#x %d %d", w.pattern, w.off, w.n))
				model.write(bytes.Repeat([]byte{w.pattern}, int(w.n)), w.off)
			}
			qargs = append(qargs, "-c", fmt.Sprintf("write -z %d %d", 80<<20+cs/2, 4096))
			model.zero(80<<20+cs/2, 4096)
			interopRun(t, "qemu-io", append(append([]string{"-f", "parallels"}, qargs...), hds)...)
			interopQemuCheck(t, hds)

			if r, err := Check(hds, false); err != nil || !r.Clean() {
				t.Errorf("our Check of a qemu-written image: %v %+v", err, r)
			}
			qraw := filepath.Join(tmp, "qemu.raw")
			interopQemuConvert(t, hds, qraw)
			ours := filepath.Join(tmp, "ours.raw")
			if got := interopExport(t, []string{hds}, ours); got != size {
				t.Fatalf("our size %d, qemu's %d", got, size)
			}
			interopCompareFiles(t, qraw, ours, size)
			interopCompareFiles(t, model.path(), ours, size)

			// Unaligned reads straight through the chain as well.
			c, err := OpenChain([]string{hds}, ChainOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, w := range writes {
				got := make([]byte, w.n+2)
				want := make([]byte, w.n+2)
				off := max(0, w.off-1)
				n, err := c.ReadAt(got, off)
				if err != nil && !(errors.Is(err, io.EOF) && off+int64(n) == size) {
					t.Fatalf("ReadAt %d: %v", off, err)
				}
				if _, err := model.f.ReadAt(want[:n], off); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				if !bytes.Equal(got[:n], want[:n]) {
					t.Fatalf("ReadAt(%d, %d) differs from what qemu-io wrote", off, n)
				}
			}
		})
	}
}

// TestInteropWeWriteQemuReads: an image written through the Chain API (random
// and partial-cluster writes, Discard, Grow; with 64 KiB clusters a Grow past
// what the BAT area holds, so data clusters are relocated) passes qemu-img
// check after Close and qemu-img convert equals our Export and the model.
func TestInteropWeWriteQemuReads(t *testing.T) {
	interopRequireTools(t)
	for _, tc := range interopClusterSizes {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			cs := tc.cs
			size := int64(64 << 20)
			grown := int64(256 << 20)
			if cs == 64<<10 {
				// One 64 KiB BAT cluster maps (64K-64)/4 clusters, just under
				// 1 GiB: 1.5 GiB needs a second BAT cluster, so the first data
				// cluster has to move.
				grown = 1536 << 20
			}
			dir := filepath.Join(tmp, "img")
			if err := Create(dir, size, CreateOptions{ClusterSize: cs}); err != nil {
				t.Fatal(err)
			}
			model := newInteropModel(t, filepath.Join(tmp, "model.raw"), size)
			img, err := OpenDir(dir, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			c := img.Chain()
			r := rand.New(rand.NewPCG(2, uint64(cs)))
			write := func(off, n int64) {
				t.Helper()
				p := interopRandBytes(r, n)
				if _, err := c.WriteAt(p, off); err != nil {
					t.Fatalf("WriteAt(%d, %d): %v", off, n, err)
				}
				model.write(p, off)
			}
			discard := func(off, n int64) {
				t.Helper()
				if err := c.Discard(off, n); err != nil {
					t.Fatalf("Discard(%d, %d): %v", off, n, err)
				}
				model.zero(off, n)
			}
			// The first cluster written lands right after the BAT: the one a
			// relocating Grow has to move.
			write(0, cs)
			for range 40 {
				var n int64
				switch r.IntN(3) {
				case 0:
					n = 4096
				case 1:
					n = 1 + r.Int64N(2*cs)
				default:
					n = 512 * (1 + r.Int64N(16))
				}
				write(r.Int64N(size-n), n)
			}
			discard(4*cs, 2*cs)         // whole clusters
			discard(cs+100, 5000)       // part of one cluster
			discard(7*cs-1000, cs+3000) // unaligned, over a boundary
			discard(size-cs, cs)        // the last cluster
			write(4*cs+cs/2, 4096)      // back into a punched cluster
			write(size-10000, 10000)    // the end of the disk
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := img.Grow(grown); err != nil {
				t.Fatalf("Grow(%d): %v", grown, err)
			}
			model.grow(grown)
			write(size-5000, 10000)  // across the old end
			write(grown-cs-100, 200) // into the new space
			write(grown-4096, 4096)  // the new end
			write(3*cs+10, 100)      // clusters that may have moved
			discard(2*cs, cs)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}

			files := mustFiles(t, dir)
			if cs == 64<<10 {
				h := interopReadHeader(t, files[0])
				if h.DataStart() <= cs {
					t.Fatalf("grow to %d kept the data offset at %d: the test did not relocate clusters", grown, h.DataStart())
				}
			}
			interopQemuCheck(t, files[0])
			if r, err := Check(files[0], false); err != nil || !r.Clean() {
				t.Errorf("Check: %v %+v", err, r)
			}
			qraw := filepath.Join(tmp, "qemu.raw")
			interopQemuConvert(t, files[0], qraw)
			ours := filepath.Join(tmp, "ours.raw")
			if got := interopExport(t, files, ours); got != grown {
				t.Fatalf("size %d after grow, want %d", got, grown)
			}
			interopCompareFiles(t, model.path(), ours, grown)
			interopCompareFiles(t, qraw, ours, grown)
		})
	}
}

func interopReadHeader(t *testing.T, path string) Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, HeaderSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	h, err := DecodeHeader(b, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestInteropSnapshotChain: root + 2 snapshots made with Create, OpenDir and
// Image.Snapshot (copy-ups of partial clusters, discards over lower data, a
// Grow of the top). The flattened Export equals the model; every delta file
// passes qemu-img check on its own, and qemu-img convert of the root delta
// (and our OpenSnapshot of the first snapshot) equals the disk as it was when
// the first snapshot was taken.
func TestInteropSnapshotChain(t *testing.T) {
	interopRequireTools(t)
	for _, tc := range interopClusterSizes {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			cs := tc.cs
			size, grown := int64(128<<20), int64(192<<20)
			dir := filepath.Join(tmp, "img")
			if err := Create(dir, size, CreateOptions{ClusterSize: cs}); err != nil {
				t.Fatal(err)
			}
			final := newInteropModel(t, filepath.Join(tmp, "final.raw"), size)
			first := newInteropModel(t, filepath.Join(tmp, "first.raw"), size)
			img, err := OpenDir(dir, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(3, uint64(cs)))
			models := []*interopModel{final, first}
			write := func(off, n int64) {
				t.Helper()
				p := interopRandBytes(r, n)
				if _, err := img.Chain().WriteAt(p, off); err != nil {
					t.Fatalf("WriteAt(%d, %d): %v", off, n, err)
				}
				for _, m := range models {
					m.write(p, off)
				}
			}
			discard := func(off, n int64) {
				t.Helper()
				if err := img.Chain().Discard(off, n); err != nil {
					t.Fatalf("Discard(%d, %d): %v", off, n, err)
				}
				for _, m := range models {
					m.zero(off, n)
				}
			}

			// Root: a run of whole clusters and some scattered partial ones.
			write(0, 8*cs)
			for i := range int64(6) {
				write(20*cs+i*3*cs+777, 5000)
			}
			write(size-4096, 4096)
			snap1, err := img.Snapshot(SnapshotOptions{})
			if err != nil {
				t.Fatal(err)
			}
			models = []*interopModel{final}

			// Snapshot 1's child: copy-ups, discards over root data, new data.
			write(cs+100, 300)       // partial overwrite: copy-up
			write(3*cs, cs)          // whole-cluster overwrite
			discard(5*cs, cs)        // hide a whole root cluster
			discard(6*cs+4096, 8192) // zero part of a root cluster
			write(40*cs+5, 2*cs)     // fresh clusters
			write(20*cs+700, 200)    // over a partial root cluster
			if _, err := img.Snapshot(SnapshotOptions{}); err != nil {
				t.Fatal(err)
			}

			// The top: overwrite snapshot-1 data, grow, write past the old end.
			write(cs+200, 50)
			write(40*cs+cs/2, cs)
			discard(3*cs, cs+17)
			if err := img.Grow(grown); err != nil {
				t.Fatalf("Grow: %v", err)
			}
			final.grow(grown)
			write(size-2048, 8192)
			write(grown-cs, cs)
			if d := img.Chain().Depth(); d != 3 {
				t.Fatalf("depth %d, want 3", d)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}

			files := mustFiles(t, dir)
			if len(files) != 3 {
				t.Fatalf("chain %v, want 3 deltas", files)
			}
			for _, f := range files {
				interopQemuCheck(t, f)
			}
			if r, err := Check(dir, false); err != nil || !r.Clean() {
				t.Errorf("Check: %v %+v", err, r)
			}
			ours := filepath.Join(tmp, "flat.raw")
			if got := interopExport(t, files, ours); got != grown {
				t.Fatalf("flattened size %d, want %d", got, grown)
			}
			interopCompareFiles(t, final.path(), ours, grown)

			qroot := filepath.Join(tmp, "qemu-root.raw")
			interopQemuConvert(t, files[0], qroot)
			interopCompareFiles(t, first.path(), qroot, size)
			sc, err := OpenSnapshot(dir, snap1)
			if err != nil {
				t.Fatalf("OpenSnapshot: %v", err)
			}
			snapRaw := filepath.Join(tmp, "snap1.raw")
			err = Export(sc, snapRaw)
			sc.Close()
			if err != nil {
				t.Fatal(err)
			}
			interopCompareFiles(t, first.path(), snapRaw, size)
		})
	}
}
