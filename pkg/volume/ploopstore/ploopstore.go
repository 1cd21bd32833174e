// Package ploopstore is the real volume.ImageStore: ploop image directories
// from pkg/image. It translates types and sentinel errors, and has offline
// operations replay what a dead serving process left (pkg/attach).
package ploopstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// Store implements volume.ImageStore over pkg/image.
type Store struct {
	runDir string // the serving processes' run directory (their journals)
}

var _ volume.ImageStore = Store{}

// New returns the store of a driver whose serving processes keep their
// runtime directories under runDir ("" = attach.DefaultRunDir): offline
// operations replay the pending-allocation journal a dead one left there.
func New(runDir string) Store { return Store{runDir: runDir} }

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
func (s Store) SnapshotDir(_ context.Context, dir string, opts volume.SnapshotOptions) (string, error) {
	if err := attach.ReplayJournal(s.runDir, dir, nil); err != nil {
		return "", err
	}
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
func (s Store) GrowDir(_ context.Context, dir string, size int64) error {
	if err := attach.ReplayJournal(s.runDir, dir, nil); err != nil {
		return err
	}
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
func (s Store) MergeDir(ctx context.Context, dir string, req volume.MergeRequest) (volume.MergeResult, error) {
	// A merge into or of the top opens it for writing: its recovery would
	// reclaim the clusters of writes a dead serving process acknowledged.
	if err := attach.ReplayJournal(s.runDir, dir, nil); err != nil {
		return volume.MergeResult{}, err
	}
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
