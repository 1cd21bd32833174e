package dataplane

import (
	"fmt"
	"time"
)

// RestartPolicy decides what the keeper does when a serving process dies
// without saying goodbye. The first restart is immediate: writers see a
// pause of a few milliseconds. A server that dies again soon after it came
// up (a crash loop: a request that kills every server it reaches, an image
// that cannot be opened) is restarted after a growing delay, and after
// MaxQuickFailures such deaths in a row the keeper gives up: it aborts the
// FUSE connection, so that I/O fails with EIO instead of hanging, and the
// driver attaches the volume again at its next stage or start (the
// behaviour before the data plane).
type RestartPolicy struct {
	// MaxQuickFailures is how many quick failures in a row end the
	// restarts; 0 = DefaultMaxQuickFailures.
	MaxQuickFailures int
	// MinUptime: a server that served at least this long before dying was
	// not crash-looping (the failure count starts again); 0 = DefaultMinUptime.
	MinUptime time.Duration
	// Backoff is the delay after the second quick failure in a row,
	// doubled after each further one, at most MaxBackoff; 0 = defaults.
	Backoff, MaxBackoff time.Duration
}

// Defaults of RestartPolicy.
const (
	DefaultMaxQuickFailures = 5
	DefaultMinUptime        = 500 * time.Millisecond
	DefaultBackoff          = 100 * time.Millisecond
	DefaultMaxBackoff       = 2 * time.Second
)

func (p RestartPolicy) withDefaults() RestartPolicy {
	if p.MaxQuickFailures <= 0 {
		p.MaxQuickFailures = DefaultMaxQuickFailures
	}
	if p.MinUptime <= 0 {
		p.MinUptime = DefaultMinUptime
	}
	if p.Backoff <= 0 {
		p.Backoff = DefaultBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	return p
}

// restartDecision is what to do after a server died.
type restartDecision struct {
	// GiveUp, when set, says why the volume is not restarted.
	GiveUp string
	// Delay before the restart.
	Delay time.Duration
}

// decide: canResend is whether the connection's kernel re-sends taken
// requests (without it a successor would leave them unanswered for ever:
// restarting is worse than failing); quickFailures counts the failures in
// a row, this one included.
func (p RestartPolicy) decide(canResend bool, quickFailures int) restartDecision {
	p = p.withDefaults()
	if !canResend {
		return restartDecision{GiveUp: "the kernel cannot re-send the requests a dead server had taken " +
			"(FUSE_NOTIFY_RESEND needs Linux 6.9, FUSE protocol 7.40): failing the volume's I/O " +
			"(EIO) so that the driver attaches it again"}
	}
	if quickFailures > p.MaxQuickFailures {
		return restartDecision{GiveUp: fmt.Sprintf("the serving process failed %d times in a row, each within %v of its start: "+
			"failing the volume's I/O (EIO) instead of restarting it again", quickFailures-1, p.MinUptime)}
	}
	if quickFailures <= 1 {
		return restartDecision{}
	}
	d := p.Backoff
	for i := 2; i < quickFailures && d < p.MaxBackoff; i++ {
		d *= 2
	}
	return restartDecision{Delay: min(d, p.MaxBackoff)}
}
