package attach

import (
	"context"
	"errors"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// Attach is NewClient(opts).Attach.
func Attach(ctx context.Context, dir string, opts AttachOptions) (string, error) {
	return NewClient(opts).Attach(ctx, dir)
}

// Detach is Client.Detach with DefaultRunDir.
func Detach(ctx context.Context, dir string) error {
	return NewClient(AttachOptions{}).Detach(ctx, dir)
}

// Snapshot is Client.Snapshot with DefaultRunDir.
func Snapshot(ctx context.Context, dir, newDeltaFile string) (string, error) {
	return NewClient(AttachOptions{}).Snapshot(ctx, dir, newDeltaFile)
}

// Grow is Client.Grow with DefaultRunDir.
func Grow(ctx context.Context, dir string, size int64) error {
	return NewClient(AttachOptions{}).Grow(ctx, dir, size)
}

// GetStatus is Client.Status with DefaultRunDir.
func GetStatus(ctx context.Context, dir string) (Status, error) {
	return NewClient(AttachOptions{}).Status(ctx, dir)
}

// Cleanup is Client.Cleanup with DefaultRunDir.
func Cleanup(ctx context.Context, dir string) error {
	return NewClient(AttachOptions{}).Cleanup(ctx, dir)
}

// SnapshotDir snapshots dir whether or not it is attached: offline with
// image.SnapshotDir, or, when the image is busy, online through its serving
// process (runDir "" = DefaultRunDir). For "csi-ploop image snapshot".
func SnapshotDir(ctx context.Context, dir, runDir string, opts image.SnapshotOptions) (string, error) {
	if err := ReplayJournal(runDir, dir, nil); err != nil {
		return "", err
	}
	guid, err := image.SnapshotDir(dir, opts)
	if !errors.Is(err, image.ErrBusy) {
		return guid, err
	}
	guid, rerr := NewClient(AttachOptions{RunDir: runDir}).Snapshot(ctx, dir, opts.NewDeltaFile)
	if errors.Is(rerr, ErrNotAttached) {
		return "", errors.Join(err, rerr) // locked by something else
	}
	return guid, rerr
}

// GrowDir grows dir whether or not it is attached (see SnapshotDir). An
// attached image's loop device grows too; its filesystem does not.
func GrowDir(ctx context.Context, dir, runDir string, size int64) error {
	if err := ReplayJournal(runDir, dir, nil); err != nil {
		return err
	}
	err := image.GrowDir(dir, size)
	if !errors.Is(err, image.ErrBusy) {
		return err
	}
	rerr := NewClient(AttachOptions{RunDir: runDir}).Grow(ctx, dir, size)
	if errors.Is(rerr, ErrNotAttached) {
		return errors.Join(err, rerr)
	}
	return rerr
}
