package volume

import (
	"context"
	"fmt"
)

// ExpandVolume grows a volume to at least size (rounded up to SizeAlign): online
// through the serving process when attached, offline otherwise. It never shrinks; a
// size at or below the capacity returns the capacity unchanged.
func (m *Manager) ExpandVolume(ctx context.Context, id string, size int64) (int64, error) {
	if size <= 0 {
		return 0, fmt.Errorf("expand %s to %d: %w", id, size, ErrInvalid)
	}
	if err := checkVolumeID(id); err != nil {
		return 0, err
	}
	unlock, err := m.lockKey(ctx, id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	rec, err := m.volume(id)
	if err != nil {
		return 0, err
	}
	if size <= rec.CapacityBytes {
		return rec.CapacityBytes, nil
	}
	size = roundUp(size, SizeAlign)
	if err := m.growImage(ctx, id, size); err != nil {
		return 0, err
	}
	m.crashPoint("expand.grown")
	// A crash before this commit leaves the image larger than the record; the retry
	// grows to the same size again, which the image layer treats as a no-op.
	updated := *rec
	updated.CapacityBytes = size
	if err := writeJSONAtomic(m.volMetaPath(id), &updated); err != nil {
		return 0, err
	}
	m.mu.Lock()
	m.vols[id] = &updated
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
