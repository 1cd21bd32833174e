package volume

import (
	"context"
	"sync"
	"time"
)

// merger runs merge passes in a background goroutine with its own context,
// one pass at a time. A caller that changed the forest (a delete) asks for a
// pass and may wait for it: it needs a pass that starts after its request,
// so concurrent callers share passes. A pass that had to put work off
// (a key was busy, a merge failed) schedules another one, backing off.
type merger struct {
	run func(ctx context.Context) (deferred bool) // one pass
	// inline runs passes in the caller's goroutine (crash tests: a simulated
	// crash must unwind the caller).
	inline bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	requested uint64 // passes asked for
	started   uint64
	finished  uint64
	running   bool
	changed   chan struct{} // closed and replaced when a pass finishes
	retry     *time.Timer
	backoff   time.Duration
	retryMin  time.Duration // first delay of a retry (tests shorten it)
	closed    bool
}

// Retry delays of deferred work.
const (
	mergeRetryMin = 2 * time.Second
	mergeRetryMax = 5 * time.Minute
)

func newMerger(ctx context.Context, run func(context.Context) bool, inline bool) *merger {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &merger{run: run, inline: inline, ctx: ctx, cancel: cancel, changed: make(chan struct{}), retryMin: mergeRetryMin}
}

// request asks for a pass and returns the number of the pass that answers it.
func (w *merger) request() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0
	}
	w.requested = w.started + 1
	want := w.requested
	if !w.running && !w.inline {
		w.running = true
		w.wg.Add(1)
		go w.loop()
	}
	return want
}

// runAndWait asks for a pass and waits until it finished or ctx ends.
func (w *merger) runAndWait(ctx context.Context) {
	want := w.request()
	if w.inline {
		w.runInline()
	}
	for {
		w.mu.Lock()
		done, ch := w.finished >= want || w.closed, w.changed
		w.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

func (w *merger) runInline() {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return
	}
	w.running = true
	w.mu.Unlock()
	w.passes()
}

func (w *merger) loop() {
	defer w.wg.Done()
	w.passes()
}

// passes runs passes while some are asked for, then stops the goroutine.
func (w *merger) passes() {
	for {
		w.mu.Lock()
		if w.requested <= w.started || w.closed {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.started++
		n := w.started
		w.mu.Unlock()
		deferred := w.run(w.ctx)
		w.mu.Lock()
		w.finished = n
		close(w.changed)
		w.changed = make(chan struct{})
		w.scheduleRetry(deferred)
		w.mu.Unlock()
	}
}

// scheduleRetry arms a timer for a later pass when work was put off (not
// for inline passes: tests drive those themselves). Callers hold w.mu.
func (w *merger) scheduleRetry(deferred bool) {
	if !deferred || w.closed || w.inline {
		w.backoff = 0
		return
	}
	w.backoff = min(max(2*w.backoff, w.retryMin), mergeRetryMax)
	if w.retry != nil {
		w.retry.Stop()
	}
	w.retry = time.AfterFunc(w.backoff, func() { w.request() })
}

// close stops the background pass (at the next cluster batch) and waits
// for it.
func (w *merger) close() {
	w.mu.Lock()
	w.closed = true
	if w.retry != nil {
		w.retry.Stop()
	}
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
}
