package blockmap

import (
	"context"
	"sync"
	"sync/atomic"
)

// gate admits I/O requests and lets Quiesce stop new ones and drain the
// running ones. The hot path is two atomic operations on enter and one or
// two on exit; the mutex is only taken while a pause is in effect, so the
// cost does not grow with GOMAXPROCS or the number of FUSE reader
// goroutines.
//
// Correctness relies on Go atomics being sequentially consistent: enter
// increments inflight and then reads paused, pause sets paused and then
// reads inflight, so at least one side sees the other (Dekker-style).
type gate struct {
	inflight atomic.Int64
	paused   atomic.Bool

	mu     sync.Mutex
	resume chan struct{} // closed when the current pause ends

	// drained gets a token whenever inflight drops to zero during a pause.
	// Buffered so exit never blocks; stale tokens are harmless because the
	// drainer re-reads inflight.
	drained chan struct{}

	// sem serializes Quiesce calls while still honouring their contexts.
	sem chan struct{}
}

func newGate() *gate {
	return &gate{
		resume:  closedChan(),
		drained: make(chan struct{}, 1),
		sem:     make(chan struct{}, 1),
	}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// enter blocks while the gate is paused, then counts the caller as in flight.
// Every successful enter must be paired with exit.
func (g *gate) enter() {
	for {
		g.inflight.Add(1)
		if !g.paused.Load() {
			return
		}
		// A pause is starting or running: back out so the drain can
		// finish, and wait for the resume.
		g.exit()
		g.mu.Lock()
		ch := g.resume
		g.mu.Unlock()
		<-ch
	}
}

func (g *gate) exit() {
	if g.inflight.Add(-1) == 0 && g.paused.Load() {
		select {
		case g.drained <- struct{}{}:
		default:
		}
	}
}

// quiesce pauses the gate, waits until nothing is in flight, runs fn and
// resumes. If ctx ends before the drain completes, the gate resumes and
// ctx's error is returned without running fn.
func (g *gate) quiesce(ctx context.Context, fn func() error) error {
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.sem }()

	g.pause()
	defer g.unpause()
	if err := g.drain(ctx); err != nil {
		return err
	}
	return fn()
}

func (g *gate) pause() {
	g.mu.Lock()
	g.resume = make(chan struct{})
	g.paused.Store(true)
	g.mu.Unlock()
}

func (g *gate) unpause() {
	g.mu.Lock()
	g.paused.Store(false)
	close(g.resume)
	g.mu.Unlock()
}

func (g *gate) drain(ctx context.Context) error {
	for g.inflight.Load() != 0 {
		select {
		case <-g.drained:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// isPaused reports whether a Quiesce is in effect (tests use it to know
// when the gate is closed without sleeping).
func (g *gate) isPaused() bool { return g.paused.Load() }
