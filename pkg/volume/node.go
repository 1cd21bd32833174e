package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// StageRequest is NodeStageVolume after CSI validation.
type StageRequest struct {
	VolumeID    string
	StagingPath string
	Block       bool
	FsType      string // "" = the volume's fsType, else ext4
	MountFlags  []string
}

// PublishRequest is NodePublishVolume after CSI validation.
type PublishRequest struct {
	VolumeID    string
	StagingPath string
	TargetPath  string
	Block       bool
	ReadOnly    bool
	MountFlags  []string
	// SingleWriter: the access mode allows one published target only.
	SingleWriter bool
}

// VolumeStats answers NodeGetVolumeStats; Abnormal feeds VolumeCondition.
type VolumeStats struct {
	FsStats
	Block    bool
	Abnormal bool
	Message  string
}

// nodeVolume reads the record from disk, not from memory: a node-mode process may
// run beside a separate controller process that created the volume after our Open.
func (m *Manager) nodeVolume(id string) (*volumeRecord, error) {
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	rec := &volumeRecord{}
	if err := readJSON(m.volMetaPath(id), rec); err != nil {
		if isNotExist(err) {
			return nil, fmt.Errorf("volume %s: %w", id, ErrNotFound)
		}
		return nil, err
	}
	return rec, nil
}

func (m *Manager) staged(id string) (*stagedRecord, bool, error) {
	rec := &stagedRecord{}
	if err := readJSON(m.stagedPath(id), rec); err != nil {
		if isNotExist(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return rec, true, nil
}

func (m *Manager) lockNode(ctx context.Context, id string) (*volumeRecord, func(), error) {
	if m.mounter == nil {
		return nil, nil, fmt.Errorf("node operations need a Mounter: %w", ErrFailedPrecondition)
	}
	if err := checkVolumeID(id); err != nil {
		return nil, nil, err
	}
	unlock, err := m.lockKey(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	rec, err := m.nodeVolume(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		unlock()
		return nil, nil, err
	}
	return rec, unlock, nil // rec is nil when the volume does not exist
}

// NodeStage attaches the volume; a mount volume is formatted if blank and mounted at
// the staging path. Idempotent.
func (m *Manager) NodeStage(ctx context.Context, req StageRequest) error {
	rec, unlock, err := m.lockNode(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	if rec == nil {
		return fmt.Errorf("volume %s: %w", req.VolumeID, ErrNotFound)
	}
	prev, ok, err := m.staged(rec.ID)
	if err != nil {
		return err
	} else if ok && (prev.StagingPath != req.StagingPath || prev.Block != req.Block) {
		return fmt.Errorf("volume %s already staged at %s (block=%v): %w",
			rec.ID, prev.StagingPath, prev.Block, ErrAlreadyExists)
	}
	dev, err := m.attacher.Attach(ctx, m.volDir(rec.ID))
	if err != nil {
		return fmt.Errorf("attach volume %s: %w", rec.ID, err)
	}
	if !req.Block {
		if err := m.mountStaging(ctx, rec, dev, req); err != nil {
			return err
		}
	}
	st := &stagedRecord{VolumeID: rec.ID, StagingPath: req.StagingPath, Block: req.Block, Device: dev,
		FsType: firstNonEmpty(req.FsType, rec.FsType, "ext4"), MountFlags: req.MountFlags}
	if ok {
		st.Targets = prev.Targets // a repeated stage keeps what is published
	}
	return writeJSONAtomic(m.stagedPath(rec.ID), st)
}

func (m *Manager) mountStaging(ctx context.Context, rec *volumeRecord, dev string, req StageRequest) error {
	mounted, err := m.mounter.IsMountPoint(ctx, req.StagingPath)
	if err != nil || mounted {
		return err
	}
	if err := os.MkdirAll(req.StagingPath, 0o750); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	fsType := firstNonEmpty(req.FsType, rec.FsType, "ext4")
	if err := m.mounter.FormatAndMount(ctx, dev, req.StagingPath, fsType, stageOptions(fsType, req.MountFlags)); err != nil {
		return fmt.Errorf("format and mount %s (%s) at %s: %w", dev, fsType, req.StagingPath, err)
	}
	return m.growToDevice(ctx, dev, req.StagingPath)
}

// growToDevice grows a filesystem that is smaller than its device: a volume
// restored or cloned into a larger capacity carries the source's smaller
// filesystem, and the user asked for the larger size.
func (m *Manager) growToDevice(ctx context.Context, dev, path string) error {
	need, err := m.mounter.NeedResize(ctx, dev, path)
	if err != nil || !need {
		return err
	}
	if err := m.mounter.ResizeFs(ctx, dev, path); err != nil {
		return fmt.Errorf("grow the filesystem of %s to the volume size: %w", dev, err)
	}
	return nil
}

// stageOptions adds nouuid for xfs: a snapshot restore or clone carries its
// source's filesystem UUID, and both always live on this node, so without it
// XFS refuses to mount the copy while the source is mounted.
func stageOptions(fsType string, flags []string) []string {
	if fsType != "xfs" || slices.Contains(flags, "nouuid") {
		return flags
	}
	return append(slices.Clone(flags), "nouuid")
}

// NodeUnstage unmounts the staging path and detaches. Idempotent; ErrNotFound only
// when the volume neither exists nor is staged.
func (m *Manager) NodeUnstage(ctx context.Context, id, stagingPath string) error {
	rec, unlock, err := m.lockNode(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	_, staged, err := m.staged(id)
	if err != nil {
		return err
	}
	if rec == nil && !staged {
		return fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	if err := m.unmountIfMounted(ctx, stagingPath); err != nil {
		return err
	}
	if err := m.attacher.Detach(ctx, m.volDir(id)); err != nil {
		return fmt.Errorf("detach volume %s: %w", id, err)
	}
	return removeDurable(m.stagedPath(id))
}

func (m *Manager) unmountIfMounted(ctx context.Context, path string) error {
	mounted, err := m.mounter.IsMountPoint(ctx, path)
	if err != nil {
		return fmt.Errorf("check mount %s: %w", path, err)
	}
	if mounted {
		if err := m.mounter.Unmount(ctx, path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// ensureTarget creates the publish target: a directory for a filesystem, an empty
// file for a block device (bind mounts need a node of the same kind).
func ensureTarget(target string, block bool) error {
	if !block {
		return os.MkdirAll(target, 0o750)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}
