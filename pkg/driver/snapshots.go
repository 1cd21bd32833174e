package driver

import (
	"context"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := required(req.GetName(), "name"); err != nil {
		return nil, err
	}
	if err := required(req.GetSourceVolumeId(), "source_volume_id"); err != nil {
		return nil, err
	}
	for k := range req.GetParameters() {
		if !strings.HasPrefix(k, provisionerPrefix) {
			return nil, invalid("unknown snapshot parameter %q", k)
		}
	}
	unlock, err := d.lock("snapshot-name/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	unlockVol, err := d.lock(req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlockVol()
	s, err := d.dom.CreateSnapshot(ctx, req.GetSourceVolumeId(), req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

func csiSnapshot(s volume.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		ReadyToUse:     true, // the frozen chain is complete the moment it is committed
	}
}

func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if err := required(req.GetSnapshotId(), "snapshot_id"); err != nil {
		return nil, err
	}
	unlock, err := d.lock(req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.dom.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	f := volume.SnapshotFilter{SnapshotID: req.GetSnapshotId(), SourceVolumeID: req.GetSourceVolumeId()}
	snaps, next, err := d.dom.ListSnapshots(ctx, f, req.GetStartingToken(), int(req.GetMaxEntries()))
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return resp, nil
}
