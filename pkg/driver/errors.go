package driver

import (
	"context"
	"errors"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// codeFor is the one place domain sentinel errors become gRPC codes.
func codeFor(err error) (codes.Code, bool) {
	switch {
	case errors.Is(err, volume.ErrNotFound):
		return codes.NotFound, true
	case errors.Is(err, volume.ErrAlreadyExists):
		return codes.AlreadyExists, true
	case errors.Is(err, volume.ErrInvalid):
		return codes.InvalidArgument, true
	case errors.Is(err, volume.ErrOutOfRange):
		return codes.OutOfRange, true
	case errors.Is(err, volume.ErrFailedPrecondition), errors.Is(err, volume.ErrVolumeFailed):
		return codes.FailedPrecondition, true // the volume must be staged (again) or unmounted first
	case errors.Is(err, volume.ErrCorrupt):
		return codes.DataLoss, true // gRPC: "unrecoverable data loss or corruption"
	case errors.Is(err, volume.ErrResourceExhausted),
		errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return codes.ResourceExhausted, true // includes a full storage root
	case errors.Is(err, volume.ErrBusy), errors.Is(err, volume.ErrBadToken):
		return codes.Aborted, true // CSI: retry later / restart the listing
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, true
	case errors.Is(err, context.Canceled):
		return codes.Canceled, true
	}
	return codes.Unknown, false
}

// toStatus maps an error from the domain to a gRPC status error. Statuses made by
// our own validation pass through; anything unknown is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if code, ok := codeFor(err); ok {
		return status.Error(code, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}
