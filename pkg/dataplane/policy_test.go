package dataplane

import (
	"strings"
	"testing"
	"time"
)

func TestRestartPolicy(t *testing.T) {
	p := RestartPolicy{MaxQuickFailures: 4, Backoff: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}
	for _, c := range []struct {
		fails  int
		delay  time.Duration
		giveUp bool
	}{
		{1, 0, false}, // the first restart is immediate
		{2, 100 * time.Millisecond, false},
		{3, 200 * time.Millisecond, false},
		{4, 300 * time.Millisecond, false}, // capped
		{5, 0, true},
	} {
		d := p.decide(true, c.fails)
		if d.Delay != c.delay || (d.GiveUp != "") != c.giveUp {
			t.Errorf("%d failures: %+v, want delay %v give up %v", c.fails, d, c.delay, c.giveUp)
		}
	}
}

// Without FUSE_NOTIFY_RESEND a successor cannot recover what the dead
// server had taken: the keeper fails the volume (today's behaviour) and
// says why.
func TestRestartPolicyWithoutResend(t *testing.T) {
	d := RestartPolicy{}.decide(false, 1)
	if d.GiveUp == "" || !strings.Contains(d.GiveUp, "FUSE_NOTIFY_RESEND") {
		t.Fatalf("decision without RESEND: %+v", d)
	}
}
