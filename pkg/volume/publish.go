package volume

import (
	"context"
	"fmt"
	"os"
)

// NodePublish bind-mounts the staging path (filesystem) or the device node (block)
// onto the target, read-only when asked. Idempotent.
func (m *Manager) NodePublish(ctx context.Context, req PublishRequest) error {
	rec, unlock, err := m.lockNode(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	if rec == nil {
		return fmt.Errorf("volume %s: %w", req.VolumeID, ErrNotFound)
	}
	st, ok, err := m.staged(rec.ID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("volume %s is not staged: %w", rec.ID, ErrFailedPrecondition)
	}
	if st.Block != req.Block {
		return fmt.Errorf("volume %s staged with block=%v, publish asks block=%v: %w",
			rec.ID, st.Block, req.Block, ErrInvalid)
	}
	if other := otherTarget(st.Targets, req.TargetPath); req.SingleWriter && other != "" {
		return fmt.Errorf("volume %s is single-writer and already published at %s: %w",
			rec.ID, other, ErrFailedPrecondition)
	}
	source, err := m.publishSource(ctx, rec.ID, st, req)
	if err != nil {
		return err
	}
	if err := ensureTarget(req.TargetPath, req.Block); err != nil {
		return fmt.Errorf("publish target %s: %w", req.TargetPath, err)
	}
	if mounted, err := m.mounter.IsMountPoint(ctx, req.TargetPath); err != nil || mounted {
		return err
	}
	opts := publishOptions(req)
	if err := m.mounter.Mount(ctx, source, req.TargetPath, "", opts); err != nil {
		return fmt.Errorf("bind %s at %s: %w", source, req.TargetPath, err)
	}
	return m.setTarget(st, req.TargetPath, opts)
}

func otherTarget(targets []publishedTarget, target string) string {
	for _, t := range targets {
		if t.Path != target {
			return t.Path
		}
	}
	return ""
}

// setTarget records (options != nil) or forgets a published target in the
// staged record.
func (m *Manager) setTarget(st *stagedRecord, target string, options []string) error {
	kept := st.Targets[:0:0]
	for _, t := range st.Targets {
		if t.Path != target {
			kept = append(kept, t)
		}
	}
	if options != nil {
		kept = append(kept, publishedTarget{Path: target, Options: options})
	}
	st.Targets = kept
	return writeJSONAtomic(m.stagedPath(st.VolumeID), st)
}

// publishSource asks the attacher for the device again: the serving process may have
// been restarted with another loop device since staging.
func (m *Manager) publishSource(ctx context.Context, id string, st *stagedRecord, req PublishRequest) (string, error) {
	if !req.Block {
		if req.StagingPath != st.StagingPath {
			return "", fmt.Errorf("volume %s staged at %s, not %s: %w",
				id, st.StagingPath, req.StagingPath, ErrFailedPrecondition)
		}
		return st.StagingPath, nil
	}
	dev, ok, err := m.attacher.Attached(ctx, m.volDir(id))
	if err != nil {
		return "", fmt.Errorf("volume %s: attach state: %w", id, err)
	}
	if !ok {
		return "", fmt.Errorf("volume %s is not attached: %w", id, ErrFailedPrecondition)
	}
	return dev, nil
}

func publishOptions(req PublishRequest) []string {
	opts := []string{"bind"}
	if req.ReadOnly {
		opts = append(opts, "ro") // mount-utils turns bind+ro into bind then remount,ro
	}
	return append(opts, req.MountFlags...)
}

// NodeUnpublish unmounts and removes the target. Idempotent; ErrNotFound only when
// the volume does not exist and nothing is mounted there.
func (m *Manager) NodeUnpublish(ctx context.Context, id, target string) error {
	rec, unlock, err := m.lockNode(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	mounted, err := m.mounter.IsMountPoint(ctx, target)
	if err != nil {
		return fmt.Errorf("check mount %s: %w", target, err)
	}
	if rec == nil && !mounted {
		return fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	if mounted {
		if err := m.mounter.Unmount(ctx, target); err != nil {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !isNotExist(err) {
		return fmt.Errorf("remove target %s: %w", target, err)
	}
	if rec == nil {
		return nil
	}
	if st, ok, err := m.staged(rec.ID); err != nil || !ok {
		return err
	} else {
		return m.setTarget(st, target, nil)
	}
}

// NodeStats reports usage of a published or staged path.
func (m *Manager) NodeStats(ctx context.Context, id, path string) (VolumeStats, error) {
	rec, unlock, err := m.lockNode(ctx, id)
	if err != nil {
		return VolumeStats{}, err
	}
	defer unlock()
	if rec == nil {
		return VolumeStats{}, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	info, err := os.Stat(path)
	if err != nil {
		return VolumeStats{}, fmt.Errorf("volume path %s: %w", path, ErrNotFound)
	}
	if !info.IsDir() { // a block volume's bind-mounted device node
		return VolumeStats{Block: true, FsStats: FsStats{TotalBytes: rec.CapacityBytes}}, nil
	}
	mounted, err := m.mounter.IsMountPoint(ctx, path)
	if err != nil {
		return VolumeStats{}, fmt.Errorf("check mount %s: %w", path, err)
	}
	if !mounted {
		return VolumeStats{Abnormal: true, Message: "volume path is not mounted"}, nil
	}
	fs, err := m.mounter.Stats(ctx, path)
	if err != nil {
		return VolumeStats{}, fmt.Errorf("stats of %s: %w", path, err)
	}
	return VolumeStats{FsStats: fs}, nil
}

// NodeExpand grows the filesystem after the controller grew the image (online, so
// the device already has the new size). Block volumes need nothing.
func (m *Manager) NodeExpand(ctx context.Context, id, path string, block bool) (int64, error) {
	rec, unlock, err := m.lockNode(ctx, id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	if rec == nil {
		return 0, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	if block {
		return rec.CapacityBytes, nil
	}
	dev, ok, err := m.attacher.Attached(ctx, m.volDir(id))
	if err != nil {
		return 0, fmt.Errorf("volume %s: attach state: %w", id, err)
	}
	if !ok {
		return 0, fmt.Errorf("volume %s is not attached: %w", id, ErrFailedPrecondition)
	}
	if err := m.mounter.ResizeFs(ctx, dev, path); err != nil {
		return 0, fmt.Errorf("resize fs on %s at %s: %w", dev, path, err)
	}
	return rec.CapacityBytes, nil
}
