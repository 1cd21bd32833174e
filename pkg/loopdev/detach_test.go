//go:build linux

package loopdev

import (
	"errors"
	"testing"
)

// TestDetachWaitsOnlyForItsOwnBinding: once LOOP_CLR_FD is done, the
// device number may be attached again by another process at once; the
// wait for the detach must take a device showing another backing file as
// detached, not report it busy for the grace period (the churn test saw
// that whenever other tests attached devices at the same time). Its own
// backing file still there after the grace period is busy.
func TestDetachWaitsOnlyForItsOwnBinding(t *testing.T) {
	dev := Device{Path: "/dev/loop7", Number: 7}
	reads := 0
	reused := func(int) (Info, error) {
		reads++
		if reads < 3 {
			return Info{Device: dev, BackingFile: "/ours"}, nil
		}
		return Info{Device: dev, BackingFile: "/someone-elses"}, nil
	}
	if err := waitDetached(dev, "/ours", reused); err != nil {
		t.Fatalf("device reused by another file: %v", err)
	}
	held := func(int) (Info, error) { return Info{Device: dev, BackingFile: "/ours"}, nil }
	if err := waitDetached(dev, "/ours", held); !errors.Is(err, ErrBusy) {
		t.Fatalf("device still on our file: %v, want ErrBusy", err)
	}
	gone := func(int) (Info, error) { return Info{}, ErrNotAttached }
	if err := waitDetached(dev, "", gone); err != nil {
		t.Fatalf("detached device: %v", err)
	}
}
