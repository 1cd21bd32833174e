// Package ploopattach is the real volume.Attacher: per-volume serving
// processes (pkg/attach). It only translates: the errors a serving process
// answers over its control socket, typed there by stable codes, become the
// domain's sentinels here, in one place; pkg/driver turns those into gRPC
// codes. pkg/attach does not know pkg/volume.
package ploopattach

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// Attacher implements volume.Attacher over an attach.Client.
type Attacher struct {
	c *attach.Client
}

var _ volume.Attacher = Attacher{}

// New returns the attacher.
func New(c *attach.Client) Attacher { return Attacher{c: c} }

// errorMap is the one table from pkg/attach's sentinels to the domain's.
var errorMap = []struct{ from, to error }{
	// The data path failed: I/O errors until it is staged again.
	{attach.ErrVolumeFailed, volume.ErrVolumeFailed},
	{attach.ErrAborted, volume.ErrVolumeFailed},
	// ploop's chain depth limit (a snapshot of a 1024-deep chain).
	{attach.ErrResourceExhausted, volume.ErrResourceExhausted},
	{attach.ErrCorrupt, volume.ErrCorrupt},
	{attach.ErrInvalid, volume.ErrInvalid},
	// Another process holds the image (a server still starting, an operator's
	// tool), or the server went away in the middle of the call: try again.
	{attach.ErrLocked, volume.ErrBusy},
	{attach.ErrAlreadyAttached, volume.ErrBusy},
	{attach.ErrNotAttached, volume.ErrBusy},
	// A merge runs on the volume (one at a time; snapshot and grow wait),
	// or a merge was cancelled by a hand-over or detach: try again.
	{attach.ErrMerging, volume.ErrBusy},
	// The device is still mounted or open elsewhere: unmount it first.
	{attach.ErrBusy, volume.ErrFailedPrecondition},
	// A file the volume needs is missing.
	{attach.ErrNotFound, volume.ErrFailedPrecondition},
}

// mapErr gives the domain layer the sentinel it checks for.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	for _, m := range errorMap {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %w", m.to, err)
		}
	}
	return err
}

// Attach implements volume.Attacher.
func (a Attacher) Attach(ctx context.Context, dir string) (string, error) {
	dev, err := a.c.Attach(ctx, dir)
	return dev, mapErr(err)
}

// Detach implements volume.Attacher.
func (a Attacher) Detach(ctx context.Context, dir string) error {
	return mapErr(a.c.Detach(ctx, dir))
}

// Attached implements volume.Attacher.
func (a Attacher) Attached(ctx context.Context, dir string) (string, bool, error) {
	dev, ok, err := a.c.Attached(ctx, dir)
	return dev, ok, mapErr(err)
}

// Snapshot implements volume.Attacher.
func (a Attacher) Snapshot(ctx context.Context, dir, newDeltaFile string) (string, error) {
	guid, err := a.c.Snapshot(ctx, dir, newDeltaFile)
	return guid, mapErr(err)
}

// Grow implements volume.Attacher.
func (a Attacher) Grow(ctx context.Context, dir string, size int64) error {
	return mapErr(a.c.Grow(ctx, dir, size))
}

// Health implements volume.Attacher: the failure a serving process reports.
func (a Attacher) Health(ctx context.Context, dir string) (string, error) {
	st, err := a.c.Status(ctx, dir)
	if errors.Is(err, attach.ErrNotAttached) {
		return "", nil
	}
	if err != nil {
		return "", mapErr(err)
	}
	return st.Failure, nil
}

// Merge implements volume.Attacher: the volume's serving process merges
// while I/O goes on. A serving process that predates merges answers
// errors.ErrUnsupported (unchanged: the domain puts the merge off until the
// volume is attached anew).
func (a Attacher) Merge(ctx context.Context, dir string, req volume.MergeRequest) (volume.MergeResult, error) {
	res, err := a.c.Merge(ctx, dir, attach.MergeRequest{Parent: req.Parent, Child: req.Child,
		Direction: image.MergeDirection(req.Direction)})
	if err != nil {
		return volume.MergeResult{}, mapErr(err)
	}
	return volume.MergeResult{Direction: volume.MergeDirection(res.Direction), Kept: res.Kept, Dropped: res.Dropped,
		BytesCopied: res.BytesCopied, Duration: res.Duration, Pause: res.Pause}, nil
}
