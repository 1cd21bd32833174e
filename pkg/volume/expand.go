package volume

import (
	"context"
	"errors"
	"fmt"
	"os"

	"k8s.io/klog/v2"
)

// ExpandVolume is the controller side of an expansion: it answers the capacity a
// volume will have after growing to at least size (rounded up to SizeAlign) and
// never needs the volume's files. csi-resizer has no per-node mode, so the
// resizer that calls it may run on a node whose storage root does not hold the
// volume; the growth then happens in NodeExpand on the node that holds it. When
// this root does hold the volume, the image is grown right away (online through
// the serving process when attached), so that a filesystem formatted before the
// node expansion already has the new size. It never shrinks.
func (m *Manager) ExpandVolume(ctx context.Context, id string, size int64) (int64, error) {
	if size <= 0 {
		return 0, fmt.Errorf("expand %s to %d: %w", id, size, ErrInvalid)
	}
	if err := checkVolumeID(id); err != nil {
		return 0, err
	}
	size = roundUp(size, SizeAlign)
	unlock, err := m.lockKey(ctx, id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	rec, err := m.volume(id)
	if err != nil {
		return size, nil // another node's volume (or none): NodeExpand grows it there
	}
	return m.growTo(ctx, rec, size)
}

// NodeExpandRequest is NodeExpandVolume after CSI validation.
type NodeExpandRequest struct {
	VolumeID string
	// Path is where the volume is published or staged.
	Path string
	// RequiredBytes is the capacity to reach; 0 grows only the filesystem to
	// the volume's current capacity.
	RequiredBytes, LimitBytes int64
}

// NodeExpand grows the volume on the node that holds it: the image (online
// through the serving process when attached, offline otherwise), the volume
// record, and the filesystem. Every step is redone by a retry until it has
// succeeded. The volume's access type comes from its staged record (a request
// need not carry a capability).
func (m *Manager) NodeExpand(ctx context.Context, req NodeExpandRequest) (int64, error) {
	rec, unlock, err := m.lockNode(ctx, req.VolumeID)
	if err != nil {
		return 0, err
	}
	defer unlock()
	if rec == nil {
		return 0, fmt.Errorf("volume %s: %w", req.VolumeID, ErrNotFound)
	}
	size := max(roundUp(req.RequiredBytes, SizeAlign), rec.CapacityBytes)
	if req.LimitBytes > 0 && size > req.LimitBytes {
		return 0, fmt.Errorf("volume %s: %d bytes exceed the limit %d: %w", rec.ID, size, req.LimitBytes, ErrOutOfRange)
	}
	if size, err = m.growTo(ctx, rec, size); err != nil {
		return 0, err
	}
	st, staged, err := m.staged(rec.ID)
	if err != nil {
		return 0, err
	}
	if (staged && st.Block) || (!staged && isDevice(req.Path)) {
		return size, nil // the device already has the new size
	}
	dev, ok, err := m.attacher.Attached(ctx, m.volDir(rec.ID))
	if err != nil {
		return 0, fmt.Errorf("volume %s: attach state: %w", rec.ID, err)
	}
	if !ok {
		return 0, fmt.Errorf("volume %s is not attached: %w", rec.ID, ErrFailedPrecondition)
	}
	if err := m.growFilesystem(ctx, dev, req.Path, st); err != nil {
		return 0, err
	}
	return size, nil
}

// growFilesystem grows the mounted filesystem of dev online. Where that is not
// permitted (ext4 without CAP_SYS_RESOURCE) and no target is published, it grows
// it offline instead: the staging mount is taken down, grown and mounted again.
// With published targets that must wait for the next stage (FailedPrecondition).
func (m *Manager) growFilesystem(ctx context.Context, dev, path string, st *stagedRecord) error {
	err := m.mounter.ResizeFs(ctx, dev, path)
	if err == nil || !errors.Is(err, ErrFailedPrecondition) || st == nil {
		if err != nil {
			return fmt.Errorf("resize fs on %s at %s: %w", dev, path, err)
		}
		return nil
	}
	targets, terr := m.targets(st.VolumeID, st)
	if terr != nil {
		return terr
	}
	if len(targets) > 0 {
		return fmt.Errorf("volume %s is published at %s; its filesystem grows when it is staged again: %w",
			st.VolumeID, targets[0].Path, err)
	}
	klog.FromContext(ctx).Info("Growing the filesystem offline", "volumeID", st.VolumeID, "device", dev, "reason", err)
	if err := m.mounter.Unmount(ctx, st.StagingPath); err != nil {
		return fmt.Errorf("unmount %s to grow it offline: %w", st.StagingPath, err)
	}
	return m.stageFilesystem(ctx, dev, st)
}

func isDevice(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode()&os.ModeDevice != 0
}

// growTo grows the image of rec to size if that is more than the recorded
// capacity, commits the record and returns the capacity. The caller holds the
// volume key.
func (m *Manager) growTo(ctx context.Context, rec *volumeRecord, size int64) (int64, error) {
	if size <= rec.CapacityBytes {
		return rec.CapacityBytes, nil
	}
	if _, err := m.checkChain(ctx, rec.ID); err != nil {
		return 0, err
	}
	if err := m.growImage(ctx, rec.ID, size); err != nil {
		return 0, err
	}
	m.crashPoint("expand.grown")
	// A crash before this commit leaves the image larger than the record; the retry
	// grows to the same size again, which the image layer treats as a no-op.
	updated := *rec
	updated.CapacityBytes = size
	if err := writeJSONAtomic(m.volMetaPath(rec.ID), &updated); err != nil {
		return 0, err
	}
	m.mu.Lock()
	if _, known := m.vols[rec.ID]; known {
		m.vols[rec.ID] = &updated
	}
	m.mu.Unlock()
	return size, nil
}

func (m *Manager) growImage(ctx context.Context, id string, size int64) error {
	dir := m.volDir(id)
	_, attached, err := m.attacher.Attached(ctx, dir)
	if err != nil {
		return fmt.Errorf("volume %s: attach state: %w", id, err)
	}
	if attached {
		err = m.attacher.Grow(ctx, dir, size)
	} else {
		err = m.store.GrowDir(ctx, dir, size)
	}
	if err != nil {
		return fmt.Errorf("grow volume %s to %d (attached=%v): %w", id, size, attached, err)
	}
	return nil
}
