package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
)

// NodePublish bind-mounts the staging path (filesystem) or the device node (block)
// onto the target, read-only when asked. The target is recorded before it is bound,
// and the record is removed again if the bind fails. Idempotent.
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
	targets, err := m.targets(rec.ID, st)
	if err != nil {
		return err
	}
	if other := otherTarget(targets, req.TargetPath); req.SingleWriter && other != "" {
		return fmt.Errorf("volume %s is single-writer and already published at %s: %w",
			rec.ID, other, ErrFailedPrecondition)
	}
	dev, source, err := m.publishSource(ctx, rec.ID, st, req)
	if err != nil {
		return err
	}
	if err := ensureTarget(req.TargetPath, req.Block); err != nil {
		return fmt.Errorf("publish target %s: %w", req.TargetPath, err)
	}
	t := publishedTarget{Path: req.TargetPath, Options: publishOptions(req)}
	if done, err := m.alreadyPublished(ctx, rec.ID, dev, t, req.Block, targets); done || err != nil {
		return err
	}
	if err := m.recordTarget(rec.ID, t); err != nil {
		return err
	}
	if err := m.mounter.Mount(ctx, source, req.TargetPath, "", t.Options); err != nil {
		err = fmt.Errorf("bind %s at %s: %w", source, req.TargetPath, err)
		if rerr := removeDurable(m.targetPath(rec.ID, t.Path)); rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back the target record: %w", rerr))
		}
		return err
	}
	return nil
}

// alreadyPublished handles a target that is mounted already: a retry of a
// publish whose record write failed records it now; a filesystem target bound
// from another device (one lost with its serving process) is unmounted so that
// the caller binds it again.
func (m *Manager) alreadyPublished(ctx context.Context, id, dev string, t publishedTarget,
	block bool, targets []publishedTarget) (bool, error) {
	mounted, err := m.mounter.IsMountPoint(ctx, t.Path)
	if err != nil || !mounted {
		return false, err
	}
	if !block {
		ours, err := m.mounter.MountedFrom(ctx, t.Path, dev)
		if err != nil {
			return false, fmt.Errorf("check mount %s: %w", t.Path, err)
		}
		if !ours {
			if err := m.mounter.Unmount(ctx, t.Path); err != nil {
				return false, fmt.Errorf("unmount stale target %s: %w", t.Path, err)
			}
			return false, nil
		}
	}
	if slices.ContainsFunc(targets, func(o publishedTarget) bool { return o.Path == t.Path }) {
		return true, nil
	}
	return true, m.recordTarget(id, t)
}

func otherTarget(targets []publishedTarget, target string) string {
	for _, t := range targets {
		if t.Path != target {
			return t.Path
		}
	}
	return ""
}

// publishSource returns the volume's current device and what to bind: the staging
// path for a filesystem, which must be a mount of that device (after a serving
// process was lost, the staging directory may be an empty directory on the node's
// own disk, or a mount of the dead device), or the device node for a block volume.
func (m *Manager) publishSource(ctx context.Context, id string, st *stagedRecord, req PublishRequest) (dev, source string, err error) {
	if !req.Block && req.StagingPath != st.StagingPath {
		return "", "", fmt.Errorf("volume %s staged at %s, not %s: %w",
			id, st.StagingPath, req.StagingPath, ErrFailedPrecondition)
	}
	dev, ok, err := m.attacher.Attached(ctx, m.volDir(id))
	if err != nil {
		return "", "", fmt.Errorf("volume %s: attach state: %w", id, err)
	}
	if !ok {
		return "", "", fmt.Errorf("volume %s is not attached; stage it again: %w", id, ErrFailedPrecondition)
	}
	if req.Block {
		return dev, dev, nil
	}
	ours, err := m.mounter.MountedFrom(ctx, st.StagingPath, dev)
	if err != nil {
		return "", "", fmt.Errorf("check staging mount %s: %w", st.StagingPath, err)
	}
	if !ours {
		return "", "", fmt.Errorf("volume %s: staging path %s is not a mount of its device %s; stage it again: %w",
			id, st.StagingPath, dev, ErrFailedPrecondition)
	}
	return dev, st.StagingPath, nil
}

func publishOptions(req PublishRequest) []string {
	opts := []string{"bind"}
	if req.ReadOnly {
		opts = append(opts, "ro") // mount-utils turns bind+ro into bind then remount,ro
	}
	return append(opts, req.MountFlags...)
}

// NodeUnpublish unmounts and removes the target and its record. Idempotent;
// ErrNotFound only when the volume does not exist and nothing is mounted there. It
// needs no free space in the storage root.
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
	st, _, err := m.staged(id)
	if err != nil {
		return err
	}
	return m.forgetTarget(id, target, st)
}

// NodeStats reports usage of a published or staged path; a volume whose data
// path failed is reported abnormal.
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
	failure, err := m.attacher.Health(ctx, m.volDir(id))
	if err != nil {
		return VolumeStats{}, fmt.Errorf("volume %s: health: %w", id, err)
	}
	if failure != "" {
		return VolumeStats{Abnormal: true, Message: "volume failed: " + failure}, nil
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
