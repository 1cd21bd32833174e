package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// statusRetries bounds how often a status question is asked again after the
// connection was lost before an answer came. A serving process that is
// dying (killed, crashing, exiting after a detach) may accept a connection
// and then reset it: that is neither "attached" nor "not attached". Within
// a few hundred milliseconds its socket refuses connections (not attached)
// or a live server answers. Status has no side effects, so asking again is
// safe; other operations are not retried here.
const statusRetries = 5

// callStatus is call(ctx, rt, status) that asks again while the
// connection is lost before an answer (lostBeforeAnswer).
func callStatus(ctx context.Context, rt string) (response, error) {
	delay := 20 * time.Millisecond
	for i := 0; ; i++ {
		resp, err := call(ctx, rt, request{Op: opStatus})
		if err == nil || i == statusRetries || !lostBeforeAnswer(err) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return response{}, unixsock.CtxErr(ctx, err)
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// StatusAt asks the serving process of runtime directory rt (one found by
// listing runDir, whose image directory is not known yet); ErrNotAttached
// if none answers. A connection lost before the answer is asked again
// (callStatus).
func StatusAt(ctx context.Context, rt string) (Status, error) {
	resp, err := callStatus(ctx, rt)
	if err != nil {
		return Status{}, err
	}
	if resp.Status == nil {
		return Status{}, fmt.Errorf("attach: status of %s: empty answer", rt)
	}
	st := *resp.Status
	st.Protocol = resp.Version
	return st, nil
}

// lostBeforeAnswer: the server closed or reset the connection without an
// answer, as a dying process does.
func lostBeforeAnswer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
