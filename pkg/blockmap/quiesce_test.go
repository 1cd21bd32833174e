package blockmap

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
)

// A writer running through Quiesce sees a pause, never an error, and no
// Disk call happens while fn runs.
func TestQuiesceBlocksWriterAndResumes(t *testing.T) {
	d := newFileDisk(t, 16*mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := pattern(64<<10, 5)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.WriteAt(buf, (i%200)*int64(len(buf))); err != nil {
				writeErr = err
				return
			}
		}
	}()
	var stopOnce sync.Once
	stopWriter := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	t.Cleanup(stopWriter)

	waitWrites(d, d.writes.Load()+10)
	err := s.Quiesce(context.Background(), func() error {
		d.paused.Store(true)
		defer d.paused.Store(false)
		// Give the writer every chance to get past the gate.
		for range 1000 {
			runtime.Gosched()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Quiesce: %v", err)
	}
	waitWrites(d, d.writes.Load()+10) // resumed
	if v := d.violations.Load(); v != 0 {
		t.Errorf("%d Disk calls while quiesced", v)
	}
	stopWriter()
	if writeErr != nil {
		t.Errorf("writer saw %v", writeErr)
	}
}

// waitWrites spins until the disk has seen n writes (no clocks involved).
func waitWrites(d *fileDisk, n int64) {
	for d.writes.Load() < n {
		runtime.Gosched()
	}
}

// Quiesce waits for a request already inside the Disk before running fn.
func TestQuiesceDrainsInFlight(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s)
	entered, release := d.blockWritesAt(t, 8192)

	writeDone := make(chan error, 1)
	go func() {
		_, err := f.WriteAt(pattern(4096, 9), 8192)
		writeDone <- err
	}()
	<-entered

	var fnRan bool
	quiesced := make(chan error, 1)
	go func() {
		quiesced <- s.Quiesce(context.Background(), func() error { fnRan = true; return nil })
	}()
	for !s.gate.isPaused() {
		runtime.Gosched()
	}
	select {
	case err := <-quiesced:
		t.Fatalf("Quiesce returned (%v) while a write was in flight", err)
	default:
	}
	release()
	if err := <-quiesced; err != nil || !fnRan {
		t.Fatalf("Quiesce = %v, fn ran %v", err, fnRan)
	}
	if err := <-writeDone; err != nil {
		t.Fatalf("in-flight write: %v", err)
	}
}

// When ctx ends during the drain, fn does not run and I/O resumes.
func TestQuiesceContextCanceled(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{})
	f := openFile(t, s)
	entered, release := d.blockWritesAt(t, 0)
	go f.WriteAt(make([]byte, 4096), 0) //nolint:errcheck // released at cleanup
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	quiesced := make(chan error, 1)
	go func() {
		quiesced <- s.Quiesce(ctx, func() error { return errors.New("fn must not run") })
	}()
	for !s.gate.isPaused() {
		runtime.Gosched()
	}
	cancel()
	if err := <-quiesced; !errors.Is(err, context.Canceled) {
		t.Fatalf("Quiesce = %v; want context.Canceled", err)
	}
	// The gate is open again although the blocked write is still in flight.
	if _, err := f.ReadAt(make([]byte, 4096), 4096); err != nil {
		t.Fatalf("read after canceled Quiesce: %v", err)
	}
	release()
}
