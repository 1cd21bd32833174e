package volume

import (
	"context"
	"fmt"
	"os"
)

// CreateVolume creates an empty volume, restores one from a snapshot or clones one.
// It is idempotent by name: a compatible existing volume is returned, an incompatible
// one is ErrAlreadyExists.
func (m *Manager) CreateVolume(ctx context.Context, req CreateVolumeRequest) (Volume, error) {
	if err := checkCreateRequest(req); err != nil {
		return Volume{}, err
	}
	unlock, err := m.lockKey(ctx, "volname:"+req.Name)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	if v, found, err := m.existingVolume(req); found || err != nil {
		return v, err
	}
	m.gc.RLock() // our files are uncommitted until the record is written
	defer m.gc.RUnlock()
	switch {
	case req.SourceSnapshotID != "":
		return m.restoreSnapshot(ctx, req)
	case req.SourceVolumeID != "":
		return m.cloneVolume(ctx, req)
	default:
		return m.createEmpty(ctx, req)
	}
}

func checkCreateRequest(req CreateVolumeRequest) error {
	if req.Name == "" {
		return fmt.Errorf("volume name is required: %w", ErrInvalid)
	}
	if req.SourceSnapshotID != "" && req.SourceVolumeID != "" {
		return fmt.Errorf("volume %q: two content sources: %w", req.Name, ErrInvalid)
	}
	if req.ClusterSize != 0 && !ValidClusterSize(req.ClusterSize) {
		return fmt.Errorf("cluster size %d: %w", req.ClusterSize, ErrInvalid)
	}
	return nil
}

// existingVolume implements name idempotency; found reports a volume with that name.
func (m *Manager) existingVolume(req CreateVolumeRequest) (Volume, bool, error) {
	m.mu.Lock()
	id, ok := m.volByName[req.Name]
	rec := m.vols[id]
	m.mu.Unlock()
	if !ok {
		return Volume{}, false, nil
	}
	compatible := rec.SourceSnapID == req.SourceSnapshotID &&
		rec.SourceVolID == req.SourceVolumeID &&
		(req.ClusterSize == 0 || req.ClusterSize == rec.ClusterSize) &&
		(req.FsType == "" || req.FsType == rec.FsType) &&
		rec.CapacityBytes >= req.RequiredBytes &&
		(req.LimitBytes == 0 || rec.CapacityBytes <= req.LimitBytes)
	if !compatible {
		return Volume{}, true, fmt.Errorf("volume name %q is %s with other properties: %w",
			req.Name, id, ErrAlreadyExists)
	}
	return rec.public(), true, nil
}

func (m *Manager) createEmpty(ctx context.Context, req CreateVolumeRequest) (Volume, error) {
	size, err := ResolveCapacity(req.RequiredBytes, req.LimitBytes, 0)
	if err != nil {
		return Volume{}, err
	}
	if size, err = fitFilesystem(size, req.LimitBytes, req.FsType); err != nil {
		return Volume{}, err
	}
	cs := req.ClusterSize
	if cs == 0 {
		cs = DefaultClusterSize
	}
	return m.buildVolume(ctx, req, size, cs, func(dir, top string) error {
		return m.store.Create(ctx, dir, size, CreateOptions{ClusterSize: cs, DeltaFile: top})
	})
}

// restoreSnapshot stacks a new writable top on the snapshot's frozen chain. The
// snapshot key is held so the snapshot cannot be deleted under us.
func (m *Manager) restoreSnapshot(ctx context.Context, req CreateVolumeRequest) (Volume, error) {
	if err := checkSnapshotID(req.SourceSnapshotID); err != nil {
		return Volume{}, err
	}
	unlock, err := m.lockKey(ctx, req.SourceSnapshotID)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	snap, err := m.snapshot(req.SourceSnapshotID)
	if err != nil {
		return Volume{}, err
	}
	size, cs, err := m.sourceSizing(req, snap.CapacityBytes, snap.ClusterSize)
	if err != nil {
		return Volume{}, err
	}
	base := m.poolPaths(snap.Chain)
	return m.buildVolume(ctx, req, size, cs, func(dir, top string) error {
		return m.store.CreateOnChain(ctx, dir, base, size, CreateOptions{ClusterSize: cs, DeltaFile: top})
	})
}

// cloneVolume freezes the source's current top (online if attached) and stacks the
// clone on the frozen chain. No snapshot record is needed: the source's descriptor
// and the clone's both reference the frozen deltas, which keeps them alive.
func (m *Manager) cloneVolume(ctx context.Context, req CreateVolumeRequest) (Volume, error) {
	if err := checkVolumeID(req.SourceVolumeID); err != nil {
		return Volume{}, err
	}
	unlock, err := m.lockKey(ctx, req.SourceVolumeID)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	src, err := m.volume(req.SourceVolumeID)
	if err != nil {
		return Volume{}, err
	}
	size, cs, err := m.sourceSizing(req, src.CapacityBytes, src.ClusterSize)
	if err != nil {
		return Volume{}, err
	}
	base, _, err := m.freezeVolume(ctx, src.ID)
	if err != nil {
		return Volume{}, err
	}
	m.crashPoint("clone.source-frozen")
	return m.buildVolume(ctx, req, size, cs, func(dir, top string) error {
		return m.store.CreateOnChain(ctx, dir, base, size, CreateOptions{ClusterSize: cs, DeltaFile: top})
	})
}

// sourceSizing: a volume built on a chain keeps the chain's cluster size and may not
// be smaller than its source.
func (m *Manager) sourceSizing(req CreateVolumeRequest, srcCap, srcCS int64) (int64, int64, error) {
	if req.ClusterSize != 0 && req.ClusterSize != srcCS {
		return 0, 0, fmt.Errorf("cluster size %d differs from source's %d: %w", req.ClusterSize, srcCS, ErrInvalid)
	}
	size, err := ResolveCapacity(req.RequiredBytes, req.LimitBytes, srcCap)
	return size, srcCS, err
}

// buildVolume runs makeImage into a fresh dir and commits the record. On failure it
// removes what it made; after a crash the sweep does, since nothing is committed.
func (m *Manager) buildVolume(ctx context.Context, req CreateVolumeRequest, size, cs int64,
	makeImage func(dir, top string) error) (Volume, error) {
	id, err := newVolumeID()
	if err != nil {
		return Volume{}, err
	}
	delta, err := newDeltaName()
	if err != nil {
		return Volume{}, err
	}
	dir, top := m.volDir(id), m.deltaPath(delta)
	if err := makeImage(dir, top); err != nil {
		m.discard(dir, top)
		return Volume{}, fmt.Errorf("create image for volume %q: %w", req.Name, err)
	}
	m.crashPoint("create.image-done")
	rec := &volumeRecord{
		ID: id, Name: req.Name, CapacityBytes: size, ClusterSize: cs, FsType: req.FsType,
		Parameters: req.Parameters, SourceSnapID: req.SourceSnapshotID,
		SourceVolID: req.SourceVolumeID, CreatedAt: m.now().UTC(),
	}
	if err := writeJSONAtomic(m.volMetaPath(id), rec); err != nil {
		m.discard(dir, top)
		return Volume{}, err
	}
	m.crashPoint("create.committed")
	m.mu.Lock()
	m.vols[id], m.volByName[rec.Name] = rec, id
	m.mu.Unlock()
	return rec.public(), nil
}

// discard removes the files of an uncommitted volume; errors only leave garbage
// for the sweep.
func (m *Manager) discard(dir, top string) {
	_ = os.RemoveAll(dir)
	_ = os.Remove(top)
}

// minXFSBytes is the smallest disk mkfs.xfs formats ("Filesystem must be
// larger than 300MB").
const minXFSBytes = 300 << 20

// fitFilesystem raises size to what the filesystem needs, so a volume that
// is created can also be staged; a limit that forbids that is OutOfRange at
// create time rather than an Internal error at stage time.
func fitFilesystem(size, limit int64, fsType string) (int64, error) {
	if fsType != "xfs" || size >= minXFSBytes {
		return size, nil
	}
	if limit > 0 && limit < minXFSBytes {
		return 0, fmt.Errorf("xfs needs at least %d bytes, the limit is %d: %w", minXFSBytes, limit, ErrOutOfRange)
	}
	return minXFSBytes, nil
}
