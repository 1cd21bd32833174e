package volume

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/klog/v2"
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
// the staging path, and its filesystem grown to the volume size. Idempotent, and
// every step is redone by a retry until it has succeeded: a mount that exists is
// not taken as done unless it is a mount of the volume's current device, and the
// grow is checked again each time.
func (m *Manager) NodeStage(ctx context.Context, req StageRequest) error {
	rec, unlock, err := m.lockNode(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	if rec == nil {
		return fmt.Errorf("volume %s: %w", req.VolumeID, ErrNotFound)
	}
	if _, err := m.checkChain(ctx, rec.ID); err != nil {
		return err
	}
	prev, ok, err := m.staged(rec.ID)
	if err != nil {
		return err
	} else if ok && (prev.StagingPath != req.StagingPath || prev.Block != req.Block) {
		return fmt.Errorf("volume %s already staged at %s (block=%v): %w",
			rec.ID, prev.StagingPath, prev.Block, ErrAlreadyExists)
	}
	st := &stagedRecord{VolumeID: rec.ID, StagingPath: req.StagingPath, Block: req.Block,
		FsType: cmp.Or(req.FsType, rec.FsType, "ext4"), MountFlags: req.MountFlags}
	if ok {
		st.Device, st.LegacyTargets = prev.Device, prev.LegacyTargets
	}
	if !ok || !sameStaging(prev, st) {
		// Recorded before anything is attached or mounted: a crash or a failure
		// from here on leaves a record that unstage, delete and reconcile see.
		if err := writeJSONAtomic(m.stagedPath(rec.ID), st); err != nil {
			return err
		}
	}
	dev, err := m.attacher.Attach(ctx, m.volDir(rec.ID))
	if err != nil {
		return fmt.Errorf("attach volume %s: %w", rec.ID, err)
	}
	if !req.Block {
		if err := m.stageFilesystem(ctx, dev, st); err != nil {
			return err
		}
	}
	if st.Device == dev {
		return nil
	}
	st.Device = dev
	return writeJSONAtomic(m.stagedPath(rec.ID), st)
}

func sameStaging(a, b *stagedRecord) bool {
	return a.StagingPath == b.StagingPath && a.Block == b.Block && a.FsType == b.FsType &&
		slices.Equal(a.MountFlags, b.MountFlags)
}

// stageFilesystem makes the staging path a mount of dev's filesystem at the
// volume's size. A mount of another device (one lost with a dead serving process)
// is replaced. A filesystem smaller than the device (restore or clone into a larger
// volume, expansion while unstaged) is grown before it is mounted where the
// filesystem can grow offline (ext4), and after mounting otherwise (xfs); a failed
// grow unmounts again, so that the retry redoes the whole step.
func (m *Manager) stageFilesystem(ctx context.Context, dev string, st *stagedRecord) error {
	path := st.StagingPath
	mounted, err := m.mounter.IsMountPoint(ctx, path)
	if err != nil {
		return fmt.Errorf("check mount %s: %w", path, err)
	}
	if mounted {
		ours, err := m.mounter.MountedFrom(ctx, path, dev)
		if err != nil {
			return fmt.Errorf("check mount %s: %w", path, err)
		}
		if ours {
			return m.growToDevice(ctx, dev, path)
		}
		klog.FromContext(ctx).Info("Staging path is a mount of another device; mounting the volume's device there again",
			"volumeID", st.VolumeID, "path", path, "device", dev)
		if err := m.mounter.Unmount(ctx, path); err != nil {
			return fmt.Errorf("unmount stale staging mount %s: %w", path, err)
		}
	}
	if err := os.MkdirAll(path, 0o750); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	if err := m.mounter.GrowUnmounted(ctx, dev); err != nil {
		return fmt.Errorf("grow the filesystem of %s to the volume size: %w", dev, err)
	}
	if err := m.mounter.FormatAndMount(ctx, dev, path, st.FsType, stageOptions(st.FsType, st.MountFlags)); err != nil {
		return fmt.Errorf("format and mount %s (%s) at %s: %w", dev, st.FsType, path, err)
	}
	if err := m.growToDevice(ctx, dev, path); err != nil {
		if uerr := m.mounter.Unmount(ctx, path); uerr != nil {
			return errors.Join(err, fmt.Errorf("roll back the staging mount: %w", uerr))
		}
		return err
	}
	return nil
}

// growToDevice grows a mounted filesystem that is smaller than its device: a volume
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

// NodeUnstage unmounts the staging path, detaches and removes the volume's node
// records. Idempotent; ErrNotFound only when the volume neither exists nor is
// staged. It needs no free space in the storage root: it only removes records.
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
	return m.forgetVolume(id)
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
