package volume

import (
	"fmt"
	"time"
)

// Size rules of the domain.
const (
	MiB                = int64(1) << 20
	DefaultCapacity    = int64(1) << 30 // when the request gives no size
	SizeAlign          = MiB            // capacities are rounded up to this
	DefaultClusterSize = MiB
	MinClusterSize     = 64 << 10
	MaxClusterSize     = 16 << 20
)

// Volume is the public view of a committed volume.
type Volume struct {
	ID               string
	Name             string
	CapacityBytes    int64
	ClusterSize      int64
	FsType           string
	Parameters       map[string]string
	SourceSnapshotID string
	SourceVolumeID   string
	CreatedAt        time.Time
}

// Snapshot is the public view of a committed snapshot; snapshots are ready at once.
type Snapshot struct {
	ID             string
	Name           string
	SourceVolumeID string
	SizeBytes      int64
	CapacityBytes  int64
	CreatedAt      time.Time
}

// CreateVolumeRequest is CreateVolume after CSI validation. ClusterSize 0 means the
// default (or, for a restore/clone, the source's).
type CreateVolumeRequest struct {
	Name             string
	RequiredBytes    int64
	LimitBytes       int64 // 0 = no limit
	ClusterSize      int64
	FsType           string
	Parameters       map[string]string
	SourceSnapshotID string
	SourceVolumeID   string
}

func (r *volumeRecord) public() Volume {
	return Volume{
		ID: r.ID, Name: r.Name, CapacityBytes: r.CapacityBytes, ClusterSize: r.ClusterSize,
		FsType: r.FsType, Parameters: r.Parameters, SourceSnapshotID: r.SourceSnapID,
		SourceVolumeID: r.SourceVolID, CreatedAt: r.CreatedAt,
	}
}

func (r *snapshotRecord) public() Snapshot {
	return Snapshot{
		ID: r.ID, Name: r.Name, SourceVolumeID: r.SourceVolID, SizeBytes: r.SizeBytes,
		CapacityBytes: r.CapacityBytes, CreatedAt: r.CreatedAt,
	}
}

// ValidClusterSize: ploop clusters are a power of two between 64 KiB and 16 MiB.
func ValidClusterSize(cs int64) bool {
	return cs >= MinClusterSize && cs <= MaxClusterSize && cs&(cs-1) == 0
}

func roundUp(n, align int64) int64 { return (n + align - 1) / align * align }

// ResolveCapacity picks the size to create from a CSI capacity range; min is the
// capacity of the content source (0 for an empty volume), which a new volume may not
// undercut.
func ResolveCapacity(required, limit, min int64) (int64, error) {
	if required < 0 || limit < 0 {
		return 0, fmt.Errorf("negative capacity: %w", ErrInvalid)
	}
	if limit > 0 && limit < required {
		return 0, fmt.Errorf("limit %d below required %d: %w", limit, required, ErrOutOfRange)
	}
	size := max(required, min)
	if required == 0 && min == 0 { // no size asked and no source to copy it from
		size = DefaultCapacity
		if limit > 0 && size > limit {
			size = max(limit/SizeAlign*SizeAlign, min, SizeAlign)
		}
	}
	size = roundUp(size, SizeAlign)
	if limit > 0 && size > limit {
		return 0, fmt.Errorf("size %d (aligned to %d, source %d) exceeds limit %d: %w",
			size, SizeAlign, min, limit, ErrOutOfRange)
	}
	return size, nil
}
