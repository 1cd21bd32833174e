package blockmap

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// verifiedIO writes and reads back a block device with O_DIRECT from
// several workers, each owning a range of 4 KiB blocks, and remembers what
// every block must hold: the block number and a sequence number in the
// first 16 bytes, then bytes derived from both. Any I/O error or mismatch
// is recorded; check verifies the whole device at the end.
type verifiedIO struct {
	dev    string
	blocks int64
	seq    []atomic.Uint64 // per block: 0 never written

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	writes   atomic.Int64
	maxWait  atomic.Int64 // slowest write, ns

	mu   sync.Mutex
	errs []error
}

const vioBlock = 4096

func startVerifiedIO(t *testing.T, dev string, size int64, workers int) *verifiedIO {
	t.Helper()
	v := &verifiedIO{dev: dev, blocks: size / vioBlock, stop: make(chan struct{})}
	v.seq = make([]atomic.Uint64, v.blocks)
	per := v.blocks / int64(workers)
	for w := range workers {
		f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		v.wg.Add(1)
		go v.worker(f, int64(w)*per, per, uint64(w+1))
	}
	t.Cleanup(v.halt)
	return v
}

func (v *verifiedIO) halt() {
	v.stopOnce.Do(func() { close(v.stop) })
	v.wg.Wait()
}

func (v *verifiedIO) fail(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err)
}

// fill writes block b's content for seq into p.
func fill(p []byte, b int64, seq uint64) {
	binary.LittleEndian.PutUint64(p, uint64(b))
	binary.LittleEndian.PutUint64(p[8:], seq)
	x := uint64(b)<<32 ^ seq*0x9e3779b97f4a7c15 | 1
	for i := 16; i < len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
}

func (v *verifiedIO) worker(f *os.File, first, n int64, id uint64) {
	defer v.wg.Done()
	rng := rand.New(rand.NewPCG(id, uint64(time.Now().UnixNano())))
	buf := alignedTestBuffer(16 * vioBlock)
	want := make([]byte, vioBlock)
	for seq := id << 40; ; seq++ {
		select {
		case <-v.stop:
			return
		default:
		}
		count := int64(1)
		if rng.IntN(4) == 0 {
			count = 16 // some 64 KiB writes
		}
		b := first + rng.Int64N(n-count+1)
		for i := range count {
			fill(buf[i*vioBlock:(i+1)*vioBlock], b+i, seq)
		}
		start := time.Now()
		if _, err := f.WriteAt(buf[:count*vioBlock], b*vioBlock); err != nil {
			v.fail(fmt.Errorf("write block %d: %w", b, err))
			return
		}
		if d := int64(time.Since(start)); d > v.maxWait.Load() {
			v.maxWait.Store(d)
		}
		for i := range count {
			v.seq[b+i].Store(seq)
		}
		v.writes.Add(1)
		// Read back one block of this worker's range.
		r := first + rng.Int64N(n)
		if _, err := f.ReadAt(buf[:vioBlock], r*vioBlock); err != nil {
			v.fail(fmt.Errorf("read block %d: %w", r, err))
			return
		}
		if err := v.verify(buf[:vioBlock], want, r); err != nil {
			v.fail(err)
			return
		}
	}
}

// verify compares p with what block b must hold.
func (v *verifiedIO) verify(p, want []byte, b int64) error {
	seq := v.seq[b].Load()
	if seq == 0 {
		clear(want)
	} else {
		fill(want, b, seq)
	}
	if string(p) != string(want) {
		return fmt.Errorf("block %d: holds block %d seq %#x, want seq %#x",
			b, binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:]), seq)
	}
	return nil
}

// waitWrites waits until n more writes completed (or an error stopped a
// worker), so that each hand-over or kill happens with I/O in flight.
func (v *verifiedIO) waitWrites(t *testing.T, n int64) {
	t.Helper()
	target := v.writes.Load() + n
	for deadline := time.Now().Add(30 * time.Second); v.writes.Load() < target; time.Sleep(time.Millisecond) {
		if v.failed() || time.Now().After(deadline) {
			t.Fatalf("I/O stalled or failed at %d writes: %v", v.writes.Load(), v.errors())
		}
	}
}

func (v *verifiedIO) failed() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.errs) > 0
}

func (v *verifiedIO) errors() []error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.errs
}

// check stops the workers, reports their errors and verifies every block
// through the device and, after a flush, in the backing file.
func (v *verifiedIO) check(t *testing.T, backing string) {
	t.Helper()
	v.halt()
	if errs := v.errors(); len(errs) > 0 {
		t.Fatalf("%d I/O errors, first: %v", len(errs), errs[0])
	}
	f, err := os.OpenFile(v.dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatalf("flush the device: %v", err)
	}
	back, err := os.Open(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	buf := alignedTestBuffer(256 * vioBlock)
	want := make([]byte, vioBlock)
	for src, name := range map[*os.File]string{f: "device", back: "backing file"} {
		for b := int64(0); b < v.blocks; b += 256 {
			n := min(256, v.blocks-b)
			if _, err := src.ReadAt(buf[:n*vioBlock], b*vioBlock); err != nil {
				t.Fatalf("%s: read: %v", name, err)
			}
			for i := range n {
				if err := v.verify(buf[i*vioBlock:(i+1)*vioBlock], want, b+i); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
		}
	}
	t.Logf("%d verified writes, slowest %v", v.writes.Load(), time.Duration(v.maxWait.Load()))
}
