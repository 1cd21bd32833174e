package ploopattach

import (
	"errors"
	"fmt"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// TestServingProcessErrorsBecomeDomainErrors: every typed error a serving
// process can answer maps to the domain sentinel the driver turns into a
// defined gRPC code (issue 9 item 6: a snapshot at the 1024-delta limit is
// ResourceExhausted, a locked image Aborted).
func TestServingProcessErrorsBecomeDomainErrors(t *testing.T) {
	for _, c := range []struct{ from, to error }{
		{attach.ErrResourceExhausted, volume.ErrResourceExhausted},
		{attach.ErrLocked, volume.ErrBusy},
		{attach.ErrAlreadyAttached, volume.ErrBusy},
		{attach.ErrNotAttached, volume.ErrBusy},
		{attach.ErrBusy, volume.ErrFailedPrecondition},
		{attach.ErrInvalid, volume.ErrInvalid},
		{attach.ErrCorrupt, volume.ErrCorrupt},
		{attach.ErrVolumeFailed, volume.ErrVolumeFailed},
		{attach.ErrAborted, volume.ErrVolumeFailed},
		{attach.ErrNotFound, volume.ErrFailedPrecondition},
	} {
		err := mapErr(fmt.Errorf("snapshot /v: %w: detail", c.from))
		if !errors.Is(err, c.to) || !errors.Is(err, c.from) {
			t.Errorf("%v mapped to %v, want %v", c.from, err, c.to)
		}
	}
	if err := mapErr(errors.New("x")); err.Error() != "x" {
		t.Fatalf("untyped: %v", err)
	}
	if mapErr(nil) != nil {
		t.Fatal("nil mapped to an error")
	}
}
