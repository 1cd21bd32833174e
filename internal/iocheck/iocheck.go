// Package iocheck is a test helper: a writer that writes and verifies a
// block device or a file continuously (O_DIRECT, checksummed blocks that
// name their place and generation) and measures every I/O's latency, for
// tests that disturb the data path (restarts, hand-overs, crashes of the
// serving process) and must show that writers saw no error, no wrong data,
// and how long the worst pause was.
package iocheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options configure a Writer.
type Options struct {
	// Path is a block device or a file (created and sized if missing).
	Path string
	// Size is the region written, from offset 0: a multiple of BlockSize.
	Size int64
	// BlockSize of every I/O; 0 = 4096.
	BlockSize int
	// Workers each own every Workers-th block; 0 = 4.
	Workers int
	// SyncEvery: fdatasync after this many writes of a worker (0 = never;
	// a file on a filesystem needs it for its data to reach the volume
	// before the filesystem's own writeback).
	SyncEvery int
	// Seed varies the data between writers.
	Seed uint64
}

// Result is what a Writer saw.
type Result struct {
	Writes, Reads, Syncs int64
	// IOErrors counts failed reads, writes and syncs; FirstIOError tells
	// the first.
	IOErrors     int64
	FirstIOError string
	// VerifyErrors counts blocks that read back wrong (checksum, place or
	// an older generation than the last acknowledged write).
	VerifyErrors     int64
	FirstVerifyError string
	// Latencies of every I/O, sorted.
	Latencies []time.Duration
	// Worst is the longest I/O and when it ended.
	Worst   time.Duration
	WorstAt time.Time
}

// Percentile returns the p-th percentile (0 < p <= 100) of the latencies.
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies)-1) * p / 100)
	return r.Latencies[i]
}

// OK reports whether nothing failed.
func (r Result) OK() bool { return r.IOErrors == 0 && r.VerifyErrors == 0 }

func (r Result) String() string {
	return fmt.Sprintf("%d writes, %d reads, %d syncs, %d I/O errors, %d verify errors; latency p50 %v p99 %v p99.9 %v worst %v",
		r.Writes, r.Reads, r.Syncs, r.IOErrors, r.VerifyErrors,
		r.Percentile(50), r.Percentile(99), r.Percentile(99.9), r.Worst)
}

// Writer writes and verifies until Stop.
type Writer struct {
	opts  Options
	f     *os.File
	stop  atomic.Bool
	wg    sync.WaitGroup
	mu    sync.Mutex
	res   Result
	gens  []atomic.Uint64 // last acknowledged generation per block (0: never written)
	start time.Time
}

const (
	magic      = 0x6b63656863696f69 // "iocheck" + 'k'
	headerSize = 32
)

// Start opens the target and starts the workers.
func Start(opts Options) (*Writer, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 4096
	}
	if opts.Workers == 0 {
		opts.Workers = 4
	}
	if opts.Size <= 0 || opts.Size%int64(opts.BlockSize) != 0 || opts.Size/int64(opts.BlockSize) < int64(opts.Workers) {
		return nil, fmt.Errorf("iocheck: size %d for %d workers of %d-byte blocks", opts.Size, opts.Workers, opts.BlockSize)
	}
	f, err := os.OpenFile(opts.Path, os.O_RDWR|os.O_CREATE|unix.O_DIRECT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("iocheck: %w", err)
	}
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < opts.Size {
		if err := f.Truncate(opts.Size); err != nil {
			f.Close()
			return nil, fmt.Errorf("iocheck: %w", err)
		}
	}
	w := &Writer{opts: opts, f: f, gens: make([]atomic.Uint64, opts.Size/int64(opts.BlockSize)), start: time.Now()}
	for i := range opts.Workers {
		w.wg.Add(1)
		go w.worker(i)
	}
	return w, nil
}

// Stop ends the workers, reads every written block back once more, closes
// the target and returns what was seen.
func (w *Writer) Stop() Result {
	w.stop.Store(true)
	w.wg.Wait()
	buf := alignedBuf(w.opts.BlockSize)
	for b := range w.gens {
		if gen := w.gens[b].Load(); gen != 0 {
			w.verify(buf, int64(b), gen)
		}
	}
	w.f.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	slices.Sort(w.res.Latencies)
	return w.res
}

// Reset returns the result so far and starts counting anew (the blocks
// written stay known): a test measures a baseline, then the disturbance.
func (w *Writer) Reset() Result {
	w.mu.Lock()
	r := w.res
	w.res = Result{}
	w.mu.Unlock()
	slices.Sort(r.Latencies)
	return r
}

// Snapshot returns the result so far (latencies unsorted copy, sorted).
func (w *Writer) Snapshot() Result {
	w.mu.Lock()
	r := w.res
	r.Latencies = slices.Clone(w.res.Latencies)
	w.mu.Unlock()
	slices.Sort(r.Latencies)
	return r
}

func (w *Writer) worker(id int) {
	defer w.wg.Done()
	r := rand.New(rand.NewPCG(w.opts.Seed, uint64(id)))
	buf := alignedBuf(w.opts.BlockSize)
	nblocks := int64(len(w.gens))
	mine := (nblocks - int64(id) + int64(w.opts.Workers) - 1) / int64(w.opts.Workers)
	writes := 0
	for !w.stop.Load() {
		b := int64(id) + r.Int64N(mine)*int64(w.opts.Workers)
		gen := w.gens[b].Load() + 1
		fill(buf, b, gen, w.opts.Seed)
		if err := w.timed(func() error { return full(w.f.WriteAt(buf, b*int64(w.opts.BlockSize))) }, &w.res.Writes); err != nil {
			w.ioError(fmt.Errorf("write block %d: %w", b, err))
			continue // the generation stays: the write may or may not have happened
		}
		w.gens[b].Store(gen)
		writes++
		if w.opts.SyncEvery > 0 && writes%w.opts.SyncEvery == 0 {
			if err := w.timed(func() error { return unix.Fdatasync(int(w.f.Fd())) }, &w.res.Syncs); err != nil {
				w.ioError(fmt.Errorf("fdatasync: %w", err))
			}
		}
		rb := int64(id) + r.Int64N(mine)*int64(w.opts.Workers)
		if g := w.gens[rb].Load(); g != 0 {
			w.verify(buf, rb, g)
		}
	}
}

// verify reads block b and checks it holds generation gen.
func (w *Writer) verify(buf []byte, b int64, gen uint64) {
	if err := w.timed(func() error { return full(w.f.ReadAt(buf, b*int64(w.opts.BlockSize))) }, &w.res.Reads); err != nil {
		w.ioError(fmt.Errorf("read block %d: %w", b, err))
		return
	}
	if err := check(buf, b, gen, w.opts.Seed); err != nil {
		w.mu.Lock()
		w.res.VerifyErrors++
		if w.res.FirstVerifyError == "" {
			w.res.FirstVerifyError = err.Error()
		}
		w.mu.Unlock()
	}
}

func (w *Writer) timed(op func() error, count *int64) error {
	t0 := time.Now()
	err := op()
	d := time.Since(t0)
	w.mu.Lock()
	*count++
	w.res.Latencies = append(w.res.Latencies, d)
	if d > w.res.Worst {
		w.res.Worst, w.res.WorstAt = d, time.Now()
	}
	w.mu.Unlock()
	return err
}

func (w *Writer) ioError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.res.IOErrors++
	if w.res.FirstIOError == "" {
		w.res.FirstIOError = err.Error()
	}
}

func full(n int, err error) error {
	if err == nil && n == 0 {
		return errors.New("short I/O")
	}
	return err
}

// fill writes block b's content for generation gen: a header naming both
// and a checksum, then data derived from them.
func fill(buf []byte, b int64, gen, seed uint64) {
	binary.LittleEndian.PutUint64(buf[0:], magic)
	binary.LittleEndian.PutUint64(buf[8:], uint64(b))
	binary.LittleEndian.PutUint64(buf[16:], gen)
	r := rand.New(rand.NewPCG(seed^uint64(b), gen))
	for i := headerSize; i+8 <= len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
	binary.LittleEndian.PutUint32(buf[24:], crc32.Checksum(buf[headerSize:], crcTable))
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func check(buf []byte, b int64, gen, seed uint64) error {
	switch {
	case binary.LittleEndian.Uint64(buf[0:]) != magic:
		return fmt.Errorf("block %d: no header (zeros or foreign data)", b)
	case binary.LittleEndian.Uint64(buf[8:]) != uint64(b):
		return fmt.Errorf("block %d holds block %d", b, binary.LittleEndian.Uint64(buf[8:]))
	case binary.LittleEndian.Uint32(buf[24:]) != crc32.Checksum(buf[headerSize:], crcTable):
		return fmt.Errorf("block %d: checksum mismatch", b)
	case binary.LittleEndian.Uint64(buf[16:]) != gen:
		return fmt.Errorf("block %d: generation %d, want %d (a lost or reordered write)", b, binary.LittleEndian.Uint64(buf[16:]), gen)
	}
	return nil
}

// alignedBuf returns n bytes at a page-aligned address (O_DIRECT).
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4096)) % 4096
	return b[off : off+n : off+n]
}
