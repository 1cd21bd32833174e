package dataplane_test

import (
	"errors"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// TestCleanupRightAfterDetach: the driver's DeleteVolume cleans up right
// after NodeUnstage's detach answered, which can be before the server's bye
// reached the supervisor. The cleanup must wait for that bye rather than
// refuse a volume that is going ("kept by the data plane": Aborted for
// DeleteVolume, TestReconcileThreeGenerations flaked on it). A volume that
// is being served is still refused.
func TestCleanupRightAfterDetach(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 64<<20)
	for i := range 10 {
		p.attachImage(dir)
		if i == 0 {
			err := p.client.Cleanup(ctx(t), dir)
			if !errors.Is(err, attach.ErrAlreadyAttached) {
				t.Fatalf("cleanup of a served volume: %v, want ErrAlreadyAttached", err)
			}
		}
		if err := p.attach.Detach(ctx(t), dir); err != nil {
			t.Fatalf("round %d: detach: %v", i, err)
		}
		if err := p.client.Cleanup(ctx(t), dir); err != nil {
			t.Fatalf("round %d: cleanup right after the detach: %v", i, err)
		}
	}
	if _, ok := p.volume(dir); ok {
		t.Fatal("the supervisor still keeps the detached volume")
	}
}
