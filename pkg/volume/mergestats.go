package volume

import (
	"sync"
	"time"
)

// MergeStats counts what the merger did since the Manager was opened
// (pkg/driver exports them on /metrics).
type MergeStats struct {
	Online  int64 // merges done by a serving process while the volume was attached
	Offline int64 // merges done by the image store (unattached volume, or snapshot chains only)
	Failed  int64 // merges that failed (retried later)
	// Deferred counts merges put off because a volume or snapshot of the
	// pair was busy or the chains changed meanwhile (retried later).
	Deferred    int64
	BytesCopied int64
	Duration    time.Duration // total time spent merging
	Pause       time.Duration // total time I/O waited at online switches
	MaxPause    time.Duration // the longest of those waits
	// Pending is how many mergeable pairs the last pass left: put off, or
	// shared by several volumes' chains (merged once only one is left).
	Pending int
}

type mergeStats struct {
	mu sync.Mutex
	s  MergeStats
}

func (s *mergeStats) merged(res MergeResult, online bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if online {
		s.s.Online++
	} else {
		s.s.Offline++
	}
	s.s.BytesCopied += res.BytesCopied
	s.s.Duration += res.Duration
	s.s.Pause += res.Pause
	s.s.MaxPause = max(s.s.MaxPause, res.Pause)
}

func (s *mergeStats) failed() {
	s.mu.Lock()
	s.s.Failed++
	s.mu.Unlock()
}

func (s *mergeStats) deferred() {
	s.mu.Lock()
	s.s.Deferred++
	s.mu.Unlock()
}

func (s *mergeStats) setPending(n int) {
	s.mu.Lock()
	s.s.Pending = n
	s.mu.Unlock()
}

// MergeStats returns the merge counters.
func (m *Manager) MergeStats() MergeStats {
	m.stats.mu.Lock()
	defer m.stats.mu.Unlock()
	return m.stats.s
}
