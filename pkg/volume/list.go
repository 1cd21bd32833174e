package volume

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
)

// GetVolume returns a committed volume.
func (m *Manager) GetVolume(_ context.Context, id string) (Volume, error) {
	rec, err := m.volume(id)
	if err != nil {
		return Volume{}, err
	}
	return rec.public(), nil
}

// GetSnapshot returns a committed snapshot.
func (m *Manager) GetSnapshot(_ context.Context, id string) (Snapshot, error) {
	rec, err := m.snapshot(id)
	if err != nil {
		return Snapshot{}, err
	}
	return rec.public(), nil
}

// ListVolumes pages through volumes in ID order. The token is the ID the next page
// starts at, so a page stays valid when that very volume is deleted in between.
// maxEntries 0 means all.
func (m *Manager) ListVolumes(_ context.Context, token string, maxEntries int) ([]Volume, string, error) {
	if token != "" && !ValidVolumeID(token) {
		return nil, "", fmt.Errorf("token %q: %w", token, ErrBadToken)
	}
	m.mu.Lock()
	all := make([]Volume, 0, len(m.vols))
	for _, r := range m.vols {
		all = append(all, r.public())
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b Volume) int { return strings.Compare(a.ID, b.ID) })
	page, next := paginate(all, func(v Volume) string { return v.ID }, token, maxEntries)
	return page, next, nil
}

// SnapshotFilter selects snapshots; empty fields match everything.
type SnapshotFilter struct {
	SnapshotID     string
	SourceVolumeID string
}

// ListSnapshots pages like ListVolumes. Filters naming IDs that cannot exist give an
// empty list, as CSI asks.
func (m *Manager) ListSnapshots(_ context.Context, f SnapshotFilter, token string, maxEntries int) ([]Snapshot, string, error) {
	if token != "" && !ValidSnapshotID(token) {
		return nil, "", fmt.Errorf("token %q: %w", token, ErrBadToken)
	}
	m.mu.Lock()
	var all []Snapshot
	for _, r := range m.snaps {
		if (f.SnapshotID == "" || r.ID == f.SnapshotID) &&
			(f.SourceVolumeID == "" || r.SourceVolID == f.SourceVolumeID) {
			all = append(all, r.public())
		}
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b Snapshot) int { return strings.Compare(a.ID, b.ID) })
	page, next := paginate(all, func(s Snapshot) string { return s.ID }, token, maxEntries)
	return page, next, nil
}

// paginate returns the entries with key >= token (at most maxEntries of them) and the
// key of the first entry of the following page, "" when there is none.
func paginate[T any](sorted []T, key func(T) string, token string, maxEntries int) ([]T, string) {
	start, _ := slices.BinarySearchFunc(sorted, token, func(e T, t string) int { return strings.Compare(key(e), t) })
	rest := sorted[start:]
	if maxEntries <= 0 || len(rest) <= maxEntries {
		return rest, ""
	}
	return rest[:maxEntries], key(rest[maxEntries])
}

// Capacity is the free space of the storage root, which all volumes share.
func (m *Manager) Capacity(_ context.Context) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.root, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", m.root, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}
