package volume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// CreateSnapshot freezes the current top of a volume: online through the serving
// process when attached, offline otherwise. Idempotent by name; ready at once.
func (m *Manager) CreateSnapshot(ctx context.Context, sourceVolID, name string) (Snapshot, error) {
	if name == "" {
		return Snapshot{}, fmt.Errorf("snapshot name is required: %w", ErrInvalid)
	}
	if err := checkVolumeID(sourceVolID); err != nil {
		return Snapshot{}, err
	}
	unlock, err := m.lockKey(ctx, "snapname:"+name)
	if err != nil {
		return Snapshot{}, err
	}
	defer unlock()
	if s, found, err := m.existingSnapshot(sourceVolID, name); found || err != nil {
		return s, err
	}
	m.gc.RLock()
	defer m.gc.RUnlock()
	unlockVol, err := m.lockKey(ctx, sourceVolID)
	if err != nil {
		return Snapshot{}, err
	}
	defer unlockVol()
	vol, err := m.volume(sourceVolID)
	if err != nil {
		return Snapshot{}, err
	}
	chain, guid, err := m.freezeVolume(ctx, vol.ID)
	if err != nil {
		return Snapshot{}, err
	}
	m.crashPoint("snapshot.frozen")
	return m.commitSnapshot(ctx, vol, name, chain, guid)
}

func (m *Manager) existingSnapshot(sourceVolID, name string) (Snapshot, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.snapByNm[name]
	if !ok {
		return Snapshot{}, false, nil
	}
	rec := m.snaps[id]
	if rec.SourceVolID != sourceVolID {
		return Snapshot{}, true, fmt.Errorf("snapshot name %q belongs to volume %s: %w",
			name, rec.SourceVolID, ErrAlreadyExists)
	}
	return rec.public(), true, nil
}

func (m *Manager) commitSnapshot(ctx context.Context, vol *volumeRecord, name string,
	chain []string, guid string) (Snapshot, error) {
	names, err := m.poolNames(chain)
	if err != nil {
		return Snapshot{}, err
	}
	id, err := newSnapshotID()
	if err != nil {
		return Snapshot{}, err
	}
	rec := &snapshotRecord{
		ID: id, Name: name, SourceVolID: vol.ID, Chain: names, FrozenGUID: guid,
		CapacityBytes: vol.CapacityBytes, ClusterSize: vol.ClusterSize,
		SizeBytes: m.allocated(ctx, chain, vol.CapacityBytes), CreatedAt: m.now().UTC(),
	}
	if err := writeJSONAtomic(m.snapMetaPath(id), rec); err != nil {
		return Snapshot{}, err
	}
	m.crashPoint("snapshot.committed")
	m.mu.Lock()
	m.snaps[id], m.snapByNm[name] = rec, id
	m.mu.Unlock()
	return rec.public(), nil
}

// allocated is the snapshot size CSI reports: data held by the frozen chain, capped
// at the capacity because overwritten clusters are counted once per delta.
func (m *Manager) allocated(ctx context.Context, chain []string, capacity int64) int64 {
	var total int64
	for _, p := range chain {
		n, err := m.store.AllocatedBytes(ctx, p)
		if err != nil {
			return capacity // size is informational; never fail a snapshot on it
		}
		total += n
	}
	return min(total, capacity)
}

// freezeVolume makes the volume's current top read-only and returns the frozen chain
// (absolute paths, bottom..top). The caller holds the volume key and the GC read lock.
func (m *Manager) freezeVolume(ctx context.Context, volID string) ([]string, string, error) {
	if _, err := m.checkChain(ctx, volID); err != nil {
		return nil, "", err
	}
	delta, err := newDeltaName()
	if err != nil {
		return nil, "", err
	}
	dir, top := m.volDir(volID), m.deltaPath(delta)
	_, attached, err := m.attacher.Attached(ctx, dir)
	if err != nil {
		return nil, "", fmt.Errorf("volume %s: attach state: %w", volID, err)
	}
	var guid string
	if attached {
		guid, err = m.attacher.Snapshot(ctx, dir, top)
	} else {
		guid, err = m.store.SnapshotDir(ctx, dir, SnapshotOptions{NewDeltaFile: top})
	}
	chain, cerr := m.store.ChainFiles(ctx, dir)
	if err != nil {
		if cerr == nil && !slices.Contains(chain, top) {
			_ = os.Remove(top) // never committed
		}
		return nil, "", fmt.Errorf("snapshot volume %s (attached=%v): %w", volID, attached, err)
	}
	if cerr != nil {
		return nil, "", fmt.Errorf("volume %s: read chain after snapshot: %w", volID, cerr)
	}
	if len(chain) < 2 || chain[len(chain)-1] != top {
		return nil, "", fmt.Errorf("volume %s: top after snapshot is %v, want %s", volID, chain, top)
	}
	return chain[:len(chain)-1], guid, nil
}

// poolNames turns absolute chain paths into pool file names; a file outside the pool
// cannot be tracked by the GC, so it is refused.
func (m *Manager) poolNames(chain []string) ([]string, error) {
	names := make([]string, 0, len(chain))
	for _, p := range chain {
		name := filepath.Base(p)
		if filepath.Clean(p) != m.deltaPath(name) || !deltaNamePattern.MatchString(name) {
			return nil, fmt.Errorf("delta %s is outside the pool %s", p, m.deltasDir())
		}
		names = append(names, name)
	}
	return names, nil
}

func (m *Manager) poolPaths(names []string) []string {
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = m.deltaPath(n)
	}
	return paths
}

// DeleteSnapshot removes a snapshot; its deltas go only if nothing else uses them,
// and deltas no chain needs apart any more are merged (waited for while ctx lasts).
// Deleting an unknown snapshot succeeds (CSI idempotency).
func (m *Manager) DeleteSnapshot(ctx context.Context, id string) error {
	if !ValidSnapshotID(id) {
		return nil
	}
	removed, err := m.removeSnapshot(ctx, id)
	if err != nil || !removed {
		return err
	}
	m.mergeAfterDelete(ctx)
	return nil
}

// removeSnapshot commits the removal of the record and collects what only it
// referenced; removed is false when there was no such snapshot.
func (m *Manager) removeSnapshot(ctx context.Context, id string) (removed bool, err error) {
	unlock, err := m.lockKey(ctx, id)
	if err != nil {
		return false, err
	}
	defer unlock()
	m.mu.Lock()
	rec, ok := m.snaps[id]
	m.mu.Unlock()
	if !ok {
		return false, nil // already gone
	}
	if err := removeDurable(m.snapMetaPath(id)); err != nil {
		return false, err
	}
	m.mu.Lock()
	delete(m.snaps, id)
	delete(m.snapByNm, rec.Name)
	m.mu.Unlock()
	m.crashPoint("snapshot-delete.committed")
	return true, m.collect(ctx, m.poolPaths(rec.Chain))
}
