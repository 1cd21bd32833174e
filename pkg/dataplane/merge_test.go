package dataplane_test

import (
	"errors"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// TestMergeCancelledByHandover: a hand-over does not wait for a merge that
// runs for a long time: the old server cancels it (its caller gets
// ErrNotAttached and asks again), drains, and the successor serves; the
// merge asked again of the successor completes. A verifying writer on the
// device sees no error throughout.
func TestMergeCancelledByHandover(t *testing.T) {
	p := newPlane(t)
	dir := p.image("img", 1<<30)
	d := testhelp.FreezeFilled(t, dir, 768<<20)
	dev := p.attachImage(dir)
	w := writer(t, dev, 64<<20, false)
	pid := p.serverPID(dir)
	done := make(chan error, 1)
	go func() {
		_, err := p.attach.Merge(ctx(t), dir, attach.MergeRequest{Parent: d[0], Child: d[1], Direction: image.MergeUp})
		done <- err
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		st, err := p.attach.Status(ctx(t), dir)
		if err != nil {
			t.Fatal(err)
		}
		if m := st.Merge; m != nil && m.Done > 0 {
			if m.Done >= m.Total {
				t.Skipf("the merge copied all of %d bytes before the hand-over", m.Total)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the merge shows no progress")
		}
	}
	began := time.Now()
	next, err := p.client.Handover(ctx(t), dir)
	if err != nil {
		t.Fatalf("hand-over during a merge: %v", err)
	}
	t.Logf("hand-over from %d to %d during a merge took %v", pid, next, time.Since(began))
	if err := <-done; !errors.Is(err, attach.ErrNotAttached) {
		t.Fatalf("merge cut by a hand-over answered %v, want ErrNotAttached", err)
	}
	if st, err := p.attach.Status(ctx(t), dir); err != nil || st.Depth != 2 || st.Merge != nil || st.PID != next {
		t.Fatalf("successor after a cancelled merge: %+v %v", st, err)
	}
	res, err := p.attach.Merge(ctx(t), dir, attach.MergeRequest{Parent: d[0], Child: d[1]})
	if err != nil {
		t.Fatalf("the merge asked again of the successor: %v", err)
	}
	t.Logf("merge on the successor: %+v", res)
	if st, err := p.attach.Status(ctx(t), dir); err != nil || st.Depth != 1 {
		t.Fatalf("after the merge: %+v %v", st, err)
	}
	checkWriter(t, "writer across a merge, a hand-over and a merge", w.Stop())
}
