package blockmap

import (
	"sync/atomic"
	"time"
)

// watchdog detects a Disk call that has been running for longer than the
// request timeout and then aborts the FUSE connection. Aborting is the same
// thing the kernel does when its own request timeout fires
// (/proc/sys/fs/fuse/default_request_timeout): every pending and future
// request fails with an error instead of hanging in D state for ever.
//
// Answering just the one late request with EIO is not safe: its buffer
// belongs to the FUSE reader and is reused as soon as the handler returns,
// while the Disk call would still be reading or writing it.
//
// Instead of timestamping each request (a clock read and a shared table on
// the hot path) requests are counted in one of three epoch slots. The
// watchdog advances the epoch every period = timeout/2; before a slot is
// reused (two epochs later) it must have drained. A request still counted
// in it loaded its epoch at least two periods ago, so it is older than the
// timeout; a stuck request is found at the latest after 1.5 timeouts.
type watchdog struct {
	epoch atomic.Uint64
	slots [3]paddedCounter
}

// paddedCounter keeps slots on separate cache lines so that requests in
// different epochs do not contend.
type paddedCounter struct {
	n atomic.Int64
	_ [56]byte
}

// begin counts a request in the current epoch and returns the slot to pass
// to end.
func (w *watchdog) begin() int {
	s := int(w.epoch.Load() % 3)
	w.slots[s].n.Add(1)
	return s
}

func (w *watchdog) end(slot int) { w.slots[slot].n.Add(-1) }

// tick moves to the next epoch and reports whether the slot it reuses
// still holds a request, i.e. whether some request is overdue.
func (w *watchdog) tick() (overdue bool) {
	next := w.epoch.Load() + 1
	if w.slots[next%3].n.Load() != 0 {
		return true
	}
	w.epoch.Store(next)
	return false
}

// run calls onOverdue once when a request is overdue, or returns when done
// is closed.
func (w *watchdog) run(timeout time.Duration, done <-chan struct{}, onOverdue func()) {
	// Floor: NewTicker panics on 0, and sub-millisecond ticks only burn CPU.
	t := time.NewTicker(max(timeout/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if w.tick() {
				onOverdue()
				return
			}
		}
	}
}
