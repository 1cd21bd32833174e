package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

func TestToStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("volume x: %w", err) }
	cases := []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{wrap(volume.ErrNotFound), codes.NotFound},
		{wrap(volume.ErrAlreadyExists), codes.AlreadyExists},
		{wrap(volume.ErrInvalid), codes.InvalidArgument},
		{wrap(volume.ErrOutOfRange), codes.OutOfRange},
		{wrap(volume.ErrFailedPrecondition), codes.FailedPrecondition},
		{wrap(volume.ErrBusy), codes.Aborted},
		{wrap(volume.ErrBadToken), codes.Aborted},
		{wrap(context.DeadlineExceeded), codes.DeadlineExceeded},
		{wrap(volume.ErrResourceExhausted), codes.ResourceExhausted},
		{wrap(volume.ErrCorrupt), codes.DataLoss},
		{wrap(volume.ErrVolumeFailed), codes.FailedPrecondition},
		{wrap(&os.PathError{Op: "write", Path: "meta/staged/x.json.tmp", Err: syscall.ENOSPC}), codes.ResourceExhausted},
		{status.Error(codes.ResourceExhausted, "x"), codes.ResourceExhausted},
		{errors.New("disk on fire"), codes.Internal},
	}
	for _, c := range cases {
		if got := status.Code(toStatus(c.err)); got != c.code {
			t.Errorf("toStatus(%v) = %v, want %v", c.err, got, c.code)
		}
	}
}

func TestDomainErrorsReachTheClient(t *testing.T) {
	dom := &fakeDomain{err: fmt.Errorf("x: %w", volume.ErrOutOfRange)}
	d := newTestDriver(t, dom)
	_, err := d.CreateVolume(ctx, createReq())
	wantCode(t, err, codes.OutOfRange)
	dom.err = fmt.Errorf("x: %w", volume.ErrFailedPrecondition)
	_, err = d.DeleteVolume(ctx, deleteReq("vol-1"))
	wantCode(t, err, codes.FailedPrecondition)
	dom.err = fmt.Errorf("x: %w", volume.ErrNotFound)
	_, err = d.ControllerGetVolume(ctx, getVolReq("vol-1"))
	wantCode(t, err, codes.NotFound)
}
