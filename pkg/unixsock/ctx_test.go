package unixsock

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// lateCtx has passed its deadline but its timer has not marked it done
// yet: what a dial or read that timed out on that deadline can see.
type lateCtx struct{ context.Context }

func (lateCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }
func (lateCtx) Err() error                  { return nil }

// A timeout on ctx's deadline is ctx's, even before ctx says so
// (TestGivenUpStartLeavesNothing flaked on "dial ...: i/o timeout" taken
// for a failure of the server); other errors, and timeouts of a ctx
// without a passed deadline, stay what they are.
func TestTimeoutAtTheDeadlineIsTheContexts(t *testing.T) {
	late := lateCtx{context.Background()}
	if err := CtxErr(late, os.ErrDeadlineExceeded); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout at a passed deadline: %v, want context.DeadlineExceeded", err)
	}
	if err := CtxErr(late, os.ErrNotExist); errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("another error became the context's: %v", err)
	}
	if err := CtxErr(context.Background(), os.ErrDeadlineExceeded); errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a timeout without a context deadline became the context's: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if err := CtxErr(ctx, os.ErrDeadlineExceeded); errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a timeout before the context's deadline became the context's: %v", err)
	}
	if !CtxEnded(late, CtxErr(late, os.ErrDeadlineExceeded)) {
		t.Fatal("a timeout at a passed deadline is not the context's end")
	}
	if CtxEnded(late, os.ErrNotExist) || CtxEnded(ctx, CtxErr(ctx, os.ErrDeadlineExceeded)) {
		t.Fatal("an error of the peer taken for the context's end")
	}
}
