// Package ploopstore is the real volume.ImageStore: ploop image directories
// from pkg/image. It only translates types and sentinel errors.
package ploopstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// Store implements volume.ImageStore over pkg/image.
type Store struct{}

var _ volume.ImageStore = Store{}

// New returns the store.
func New() Store { return Store{} }

// mapErr gives the domain layer the sentinel it checks for.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, image.ErrInvalid):
		return fmt.Errorf("%w: %w", volume.ErrInvalid, err)
	case errors.Is(err, image.ErrBusy):
		return fmt.Errorf("%w: %w", volume.ErrBusy, err)
	case errors.Is(err, image.ErrChainTooDeep):
		return fmt.Errorf("%w: %w", volume.ErrResourceExhausted, err)
	case errors.Is(err, image.ErrCorrupt):
		return fmt.Errorf("%w: %w", volume.ErrCorrupt, err)
	}
	return err
}

func createOpts(o volume.CreateOptions) image.CreateOptions {
	return image.CreateOptions{ClusterSize: o.ClusterSize, DeltaFile: o.DeltaFile}
}

// Create implements volume.ImageStore.
func (Store) Create(_ context.Context, dir string, size int64, opts volume.CreateOptions) error {
	return mapErr(image.Create(dir, size, createOpts(opts)))
}

// CreateOnChain implements volume.ImageStore.
func (Store) CreateOnChain(_ context.Context, dir string, base []string, size int64, opts volume.CreateOptions) error {
	return mapErr(image.CreateOnChain(dir, base, size, createOpts(opts)))
}

// SnapshotDir implements volume.ImageStore.
func (Store) SnapshotDir(_ context.Context, dir string, opts volume.SnapshotOptions) (string, error) {
	guid, err := image.SnapshotDir(dir, image.SnapshotOptions{NewDeltaFile: opts.NewDeltaFile})
	return guid, mapErr(err)
}

// ChainFiles implements volume.ImageStore.
func (Store) ChainFiles(_ context.Context, dir string) ([]string, error) {
	d, err := image.ReadDescriptor(dir)
	if err != nil {
		return nil, mapErr(err)
	}
	files, err := d.ChainFiles(dir)
	return files, mapErr(err)
}

// GrowDir implements volume.ImageStore.
func (Store) GrowDir(_ context.Context, dir string, size int64) error {
	return mapErr(image.GrowDir(dir, size))
}

// AllocatedBytes implements volume.ImageStore.
func (Store) AllocatedBytes(_ context.Context, path string) (int64, error) {
	return image.AllocatedBytes(path)
}

// pairOpts: the domain layer has already decided, from every volume
// descriptor and snapshot record, that the pair may be merged, so the
// store's own sharing test (deltas outside the image dir count as shared:
// pool deltas always are) must not veto it.
func pairOpts(req volume.MergeRequest) image.PairMergeOptions {
	return image.PairMergeOptions{
		Direction: image.MergeDirection(req.Direction),
		Shared:    func(string) (bool, error) { return false, nil },
	}
}

func result(st image.MergeStats) volume.MergeResult {
	return volume.MergeResult{Direction: volume.MergeDirection(st.Direction), Kept: st.Kept, Dropped: st.Dropped,
		BytesCopied: st.BytesCopied, Duration: st.Duration, Pause: st.Pause}
}

// MergeDir implements volume.ImageStore.
func (Store) MergeDir(ctx context.Context, dir string, req volume.MergeRequest) (volume.MergeResult, error) {
	st, err := image.MergeDirPair(ctx, dir, req.Parent, req.Child, pairOpts(req))
	return result(st), mapMergeErr(err)
}

// MergeDeltas implements volume.ImageStore.
func (Store) MergeDeltas(ctx context.Context, req volume.MergeRequest) (volume.MergeResult, error) {
	st, err := image.MergeDeltaFiles(ctx, req.Parent, req.Child, pairOpts(req))
	return result(st), mapMergeErr(err)
}

// mapMergeErr: a pair no longer in the chain is the domain's NotFound (its
// plan is stale); a shared delta is a precondition the plan got wrong;
// context errors stay as they are (the domain tells them apart itself).
func mapMergeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, image.ErrNotFound):
		return fmt.Errorf("%w: %w", volume.ErrNotFound, err)
	case errors.Is(err, image.ErrShared):
		return fmt.Errorf("%w: %w", volume.ErrFailedPrecondition, err)
	}
	return mapErr(err)
}
