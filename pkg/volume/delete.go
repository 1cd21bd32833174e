package volume

import (
	"context"
	"fmt"
	"os"

	"k8s.io/klog/v2"
)

// DeleteVolume removes a volume; deltas still referenced by snapshots or clones
// survive, and those no chain needs apart any more are merged (waited for while
// ctx lasts). Deleting an unknown volume succeeds (CSI idempotency); deleting a
// staged or attached one is ErrFailedPrecondition.
func (m *Manager) DeleteVolume(ctx context.Context, id string) error {
	if !ValidVolumeID(id) {
		return nil
	}
	removed, err := m.removeVolume(ctx, id)
	if err != nil || !removed {
		return err
	}
	m.mergeAfterDelete(ctx)
	return nil
}

// removeVolume commits the removal of the volume and collects what only it
// referenced; removed is false when there was no such volume.
func (m *Manager) removeVolume(ctx context.Context, id string) (removed bool, err error) {
	unlock, err := m.lockKey(ctx, id)
	if err != nil {
		return false, err
	}
	defer unlock()
	m.mu.Lock()
	rec, ok := m.vols[id]
	m.mu.Unlock()
	if !ok {
		return false, nil
	}
	if err := m.checkNotInUse(ctx, id); err != nil {
		return false, err
	}
	dir := m.volDir(id)
	// Not attached: this removes what a serving process that died or failed
	// to start left (runtime directory, FUSE mount, loop device), so nothing
	// of the volume outlives it; it refuses while a process holds the image.
	if err := m.attacher.Detach(ctx, dir); err != nil {
		return false, fmt.Errorf("volume %s: clean up its serving process's leftovers: %w", id, err)
	}
	chain, cerr := m.store.ChainFiles(ctx, dir)
	if cerr != nil {
		// Without the chain we cannot collect now; the sweep will, since it works
		// from the references that remain.
		klog.FromContext(ctx).Error(cerr, "Reading chain of deleted volume", "volumeID", id)
	}
	if err := removeDurable(m.volMetaPath(id)); err != nil {
		return false, err
	}
	m.mu.Lock()
	delete(m.vols, id)
	delete(m.volByName, rec.Name)
	m.mu.Unlock()
	m.crashPoint("delete.committed")
	if err := os.RemoveAll(dir); err != nil {
		klog.FromContext(ctx).Error(err, "Removing volume dir", "volumeID", id)
	}
	m.crashPoint("delete.dir-removed")
	return true, m.collect(ctx, chain)
}

func (m *Manager) checkNotInUse(ctx context.Context, id string) error {
	if _, err := os.Stat(m.stagedPath(id)); err == nil {
		return fmt.Errorf("volume %s is staged: %w", id, ErrFailedPrecondition)
	}
	_, attached, err := m.attacher.Attached(ctx, m.volDir(id))
	if err != nil {
		return fmt.Errorf("volume %s: attach state: %w", id, err)
	}
	if attached {
		return fmt.Errorf("volume %s is attached: %w", id, ErrFailedPrecondition)
	}
	return nil
}
