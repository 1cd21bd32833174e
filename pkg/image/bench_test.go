package image

// Benchmarks of 4 KiB I/O through a Chain on a real file against plain
// pread/pwrite on a file of the same size opened the same way (O_DIRECT,
// aligned buffers). Run with:
//
//	go test ./pkg/image -run '^$' -bench . -benchtime 2s

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	benchVirtual = 1 << 30   // virtual disk / plain file size
	benchWorking = 256 << 20 // pre-allocated working set
	benchIO      = 4096
)

// benchAligned returns n bytes at a 4 KiB aligned address, as O_DIRECT needs.
func benchAligned(n int) []byte {
	b := make([]byte, n+4096)
	shift := (4096 - int(uintptr(unsafe.Pointer(&b[0]))%4096)) % 4096
	return b[shift : shift+n : shift+n]
}

// benchRandOffsets returns 4 KiB aligned random offsets below span; the
// length is a power of two so the index can be masked.
func benchRandOffsets(span int64) []int64 {
	r := rand.New(rand.NewPCG(42, 42))
	offs := make([]int64, 1<<16)
	for i := range offs {
		offs[i] = r.Int64N(span/benchIO) * benchIO
	}
	return offs
}

// benchTarget is what the I/O benchmarks drive: a chain or a plain file.
type benchTarget struct {
	read  func(p []byte, off int64) error
	write func(p []byte, off int64) error
}

func chainTarget(c *Chain) benchTarget {
	return benchTarget{
		read:  func(p []byte, off int64) error { _, err := c.ReadAt(p, off); return err },
		write: func(p []byte, off int64) error { _, err := c.WriteAt(p, off); return err },
	}
}

func plainTarget(fd int) benchTarget {
	return benchTarget{
		read:  func(p []byte, off int64) error { _, err := unix.Pread(fd, p, off); return err },
		write: func(p []byte, off int64) error { _, err := unix.Pwrite(fd, p, off); return err },
	}
}

// benchFill writes [0, n) in 1 MiB pieces of non-zero data.
func benchFill(b *testing.B, write func(p []byte, off int64) error, n int64) {
	b.Helper()
	buf := benchAligned(1 << 20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < n; off += int64(len(buf)) {
		if err := write(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

// benchNewChain creates a 1 GiB delta of 1 MiB clusters in dir and opens it
// with direct I/O.
func benchNewChain(b *testing.B, dir string) *Chain {
	b.Helper()
	return benchChain(b, dir, benchVirtual, DefaultClusterSize)
}

// benchChain creates (or replaces) dir/root.hds and opens it with direct I/O.
func benchChain(b *testing.B, dir string, size, cs int64) *Chain {
	return benchChainWith(b, dir, size, cs, nil)
}

// benchChainWith is benchChain with the pending-allocation journal j.
func benchChainWith(b *testing.B, dir string, size, cs int64, j *PendingJournal) *Chain {
	b.Helper()
	path := filepath.Join(dir, "root.hds")
	os.Remove(path)
	if err := CreateDelta(path, size, cs); err != nil {
		b.Fatal(err)
	}
	c, err := OpenChain([]string{path}, ChainOptions{FS: NewOSFS(true), Journal: j})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// benchNewPlain creates a sparse 1 GiB file and opens it with O_DIRECT.
func benchNewPlain(b *testing.B, dir string) *os.File {
	b.Helper()
	path := filepath.Join(dir, "plain.raw")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_DIRECT, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(benchVirtual); err != nil {
		f.Close()
		b.Fatal(err)
	}
	return f
}

func benchIOPattern(b *testing.B, t benchTarget, write, random bool) {
	buf := benchAligned(benchIO)
	for i := range buf {
		buf[i] = byte(i)
	}
	op := t.read
	if write {
		op = t.write
	}
	offs := benchRandOffsets(benchWorking)
	mask := len(offs) - 1
	b.SetBytes(benchIO)
	i := 0
	for b.Loop() {
		off := int64(i) * benchIO % benchWorking
		if random {
			off = offs[i&mask]
		}
		if err := op(buf, off); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func benchPatterns(b *testing.B, t benchTarget) {
	for _, p := range []struct {
		name          string
		write, random bool
	}{
		{"seq-read", false, false},
		{"rand-read", false, true},
		{"seq-write", true, false},
		{"rand-write", true, true},
	} {
		b.Run(p.name, func(b *testing.B) { benchIOPattern(b, t, p.write, p.random) })
	}
}

// BenchmarkIO4K: 4 KiB reads and overwrites inside a pre-allocated 256 MiB
// working set of a 1 GiB disk: a Chain (direct I/O) vs a plain O_DIRECT file.
func BenchmarkIO4K(b *testing.B) {
	dir := b.TempDir()
	c := benchNewChain(b, dir)
	defer c.Close()
	benchFill(b, chainTarget(c).write, benchWorking)
	if err := c.Flush(); err != nil {
		b.Fatal(err)
	}
	f := benchNewPlain(b, dir)
	defer f.Close()
	plain := plainTarget(int(f.Fd()))
	benchFill(b, plain.write, benchWorking)
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	b.Run("chain", func(b *testing.B) { benchPatterns(b, chainTarget(c)) })
	b.Run("plain", func(b *testing.B) { benchPatterns(b, plain) })
}

// BenchmarkAllocWrite4K: every 4 KiB write lands in a cluster (1 MiB) nothing
// holds yet, so the chain allocates (space reserved ahead, data written, BAT
// entry pending until a flush), one write at a time. The plain file writes
// into holes at the same offsets, without and with an fdatasync per write. When the 1 GiB disk is used up, a fresh one is made
// with the timer stopped.
func BenchmarkAllocWrite4K(b *testing.B) {
	buf := benchAligned(benchIO)
	for i := range buf {
		buf[i] = byte(i | 1)
	}
	clusters := int64(benchVirtual / DefaultClusterSize)
	b.Run("chain", func(b *testing.B) {
		dir := b.TempDir()
		c := benchNewChain(b, dir)
		b.SetBytes(benchIO)
		var k int64
		for b.Loop() {
			if k == clusters {
				b.StopTimer()
				if err := c.Close(); err != nil {
					b.Fatal(err)
				}
				os.Remove(filepath.Join(dir, "root.hds"))
				c = benchNewChain(b, dir)
				k = 0
				b.StartTimer()
			}
			if _, err := c.WriteAt(buf, k*DefaultClusterSize); err != nil {
				b.Fatal(err)
			}
			k++
		}
		b.StopTimer()
		c.Close()
	})
	for _, sync := range []bool{false, true} {
		name := "plain-hole"
		if sync {
			name = "plain-hole+fdatasync"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			f := benchNewPlain(b, dir)
			defer f.Close()
			fd := int(f.Fd())
			b.SetBytes(benchIO)
			var k int64
			for b.Loop() {
				if k == clusters {
					b.StopTimer()
					// Punch everything: the offsets are holes again.
					if err := f.Truncate(0); err != nil {
						b.Fatal(err)
					}
					if err := f.Truncate(benchVirtual); err != nil {
						b.Fatal(err)
					}
					k = 0
					b.StartTimer()
				}
				if _, err := unix.Pwrite(fd, buf, k*DefaultClusterSize); err != nil {
					b.Fatal(err)
				}
				if sync {
					if err := unix.Fdatasync(fd); err != nil {
						b.Fatal(err)
					}
				}
				k++
			}
		})
	}
}

// BenchmarkDepthRandRead4K: random 4 KiB reads over a 256 MiB working set
// held by one delta vs spread over 64 deltas (cluster i lives in delta i%64).
func BenchmarkDepthRandRead4K(b *testing.B) {
	for _, depth := range []int{1, 64} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			dir := b.TempDir()
			c := benchNewChain(b, dir)
			defer c.Close()
			buf := benchAligned(DefaultClusterSize)
			for i := range buf {
				buf[i] = byte(i*3 + 1)
			}
			const clusters = benchWorking / DefaultClusterSize
			for level := range depth {
				if level > 0 {
					if err := c.Snapshot(filepath.Join(dir, fmt.Sprintf("delta.%d", level)), nil); err != nil {
						b.Fatal(err)
					}
				}
				for vc := level; vc < clusters; vc += depth {
					if _, err := c.WriteAt(buf, int64(vc)*DefaultClusterSize); err != nil {
						b.Fatal(err)
					}
				}
			}
			if got := c.Depth(); got != depth {
				b.Fatalf("depth %d, want %d", got, depth)
			}
			benchIOPattern(b, chainTarget(c), false, true)
		})
	}
}

// BenchmarkRandWrite4K: random 4 KiB writes from 32 goroutines (fio's qd32)
// over a 256 MiB disk, every 4 KiB block once per pass in random order:
// "first-touch" on a fresh image (every cluster is allocated on the way,
// the BAT committed at the end of the pass as a flush would) against
// "allocated" (the same image, filled before), for 64 KiB and 1 MiB
// clusters; "plain" is a sparse O_DIRECT file, fresh or filled. Run with
//
//	go test ./pkg/image -run '^$' -bench RandWrite4K -benchtime 5x
//
// and compare kIOPS; interleave runs when the machine is shared.
func BenchmarkRandWrite4K(b *testing.B) {
	const size = 256 << 20
	blocks := rand.New(rand.NewPCG(7, 7)).Perm(size / benchIO)
	for _, cs := range []int64{64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("cs=%dK/first-touch", cs>>10), func(b *testing.B) {
			dir := b.TempDir()
			benchPasses(b, blocks, func() (benchTarget, func()) {
				c := benchChain(b, dir, size, cs)
				return chainTarget(c), func() {
					if err := c.Flush(); err != nil {
						b.Fatal(err)
					}
					c.Close()
				}
			})
		})
		// The same with the pending-allocation journal a serving process
		// keeps (journal.go): an entry per allocation, no system call.
		b.Run(fmt.Sprintf("cs=%dK/first-touch-journal", cs>>10), func(b *testing.B) {
			dir := b.TempDir()
			benchPasses(b, blocks, func() (benchTarget, func()) {
				j, err := OpenPendingJournal(filepath.Join(dir, "pending-alloc"), 0, nil)
				if err != nil {
					b.Fatal(err)
				}
				c := benchChainWith(b, dir, size, cs, j)
				return chainTarget(c), func() {
					if err := c.Flush(); err != nil {
						b.Fatal(err)
					}
					c.Close()
					j.Close()
				}
			})
		})
		b.Run(fmt.Sprintf("cs=%dK/allocated", cs>>10), func(b *testing.B) {
			c := benchChain(b, b.TempDir(), size, cs)
			defer c.Close()
			benchFill(b, chainTarget(c).write, size)
			if err := c.Flush(); err != nil {
				b.Fatal(err)
			}
			benchPasses(b, blocks, func() (benchTarget, func()) { return chainTarget(c), func() {} })
		})
	}
	for _, filled := range []bool{false, true} {
		name := "plain/first-touch"
		if filled {
			name = "plain/allocated"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			benchPasses(b, blocks, func() (benchTarget, func()) {
				os.Remove(filepath.Join(dir, "plain.raw"))
				f := benchNewPlain(b, dir)
				t := plainTarget(int(f.Fd()))
				if filled {
					benchFill(b, t.write, size)
				}
				return t, func() { f.Close() }
			})
		})
	}
}

// benchPasses runs b.N passes of writes to every block (4 KiB units, in the
// order given) from 32 goroutines; setup runs untimed before each pass and
// returns the target and what ends the pass (timed: a flush belongs to it).
func benchPasses(b *testing.B, blocks []int, setup func() (benchTarget, func())) {
	var elapsed time.Duration
	for range b.N {
		t, done := setup()
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := benchAligned(benchIO)
				for i := next.Add(1) - 1; i < int64(len(blocks)); i = next.Add(1) - 1 {
					buf[0] = byte(i)
					if err := t.write(buf, int64(blocks[i])*benchIO); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		done()
		elapsed += time.Since(start)
	}
	b.ReportMetric(float64(b.N*len(blocks))/elapsed.Seconds()/1000, "kIOPS")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCopyUp4K: the first 4 KiB write into a cluster after a snapshot,
// one at a time, with the frozen delta holding data in the whole cluster
// (a full copy-up: read and write the rest of the cluster) or not holding
// the cluster at all (an allocation, nothing copied), for 64 KiB and 1 MiB
// clusters; ns/op is the cost of one such write (no flush).
func BenchmarkCopyUp4K(b *testing.B) {
	const size = 256 << 20
	buf := benchAligned(benchIO)
	for i := range buf {
		buf[i] = byte(i | 1)
	}
	for _, cs := range []int64{64 << 10, 1 << 20} {
		for _, lowerFull := range []bool{true, false} {
			name := fmt.Sprintf("cs=%dK/lower=none", cs>>10)
			if lowerFull {
				name = fmt.Sprintf("cs=%dK/lower=full", cs>>10)
			}
			b.Run(name, func(b *testing.B) {
				dir := b.TempDir()
				var c *Chain
				var k int64
				fresh := func() {
					if c != nil {
						c.Close()
					}
					os.Remove(filepath.Join(dir, "top.hds"))
					c = benchChain(b, dir, size, cs)
					if lowerFull {
						benchFill(b, chainTarget(c).write, size)
					}
					if err := c.Snapshot(filepath.Join(dir, "top.hds"), nil); err != nil {
						b.Fatal(err)
					}
					k = 0
				}
				fresh()
				b.SetBytes(benchIO)
				for b.Loop() {
					if k == size/cs {
						b.StopTimer()
						fresh()
						b.StartTimer()
					}
					if _, err := c.WriteAt(buf, k*cs+cs/2); err != nil {
						b.Fatal(err)
					}
					k++
				}
				b.StopTimer()
				c.Close()
			})
		}
	}
}

// BenchmarkJournalAdd: what the journal adds to one allocation (an entry
// in the mapped file; a commit empties it whenever it fills), against the
// addPending bookkeeping it rides on. Run with
//
//	go test ./pkg/image -run '^$' -bench JournalAdd
func BenchmarkJournalAdd(b *testing.B) {
	j, err := OpenPendingJournal(filepath.Join(b.TempDir(), "pending-alloc"), 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	j.reset(FileIdentity{Dev: 1, Ino: 1}, 64<<10)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if !j.add(uint32(i), uint32(i), 0) {
			j.commit(0)
		}
	}
}
