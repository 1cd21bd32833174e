package driver

import (
	"cmp"
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetStagingTargetPath(), "staging_target_path"); err != nil {
		return nil, err
	}
	fs, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	mnt := req.GetVolumeCapability().GetMount()
	err = d.dom.NodeStage(ctx, volume.StageRequest{
		VolumeID:    req.GetVolumeId(),
		StagingPath: req.GetStagingTargetPath(),
		Block:       req.GetVolumeCapability().GetBlock() != nil,
		FsType:      cmp.Or(fs, req.GetVolumeContext()[volumeContextFs]),
		MountFlags:  mnt.GetMountFlags(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetStagingTargetPath(), "staging_target_path"); err != nil {
		return nil, err
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.dom.NodeUnstage(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	for field, v := range map[string]string{
		"volume_id": req.GetVolumeId(), "target_path": req.GetTargetPath(),
		"staging_target_path": req.GetStagingTargetPath(), // we advertise STAGE_UNSTAGE
	} {
		if err := required(v, field); err != nil {
			return nil, err
		}
	}
	if _, err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	err = d.dom.NodePublish(ctx, volume.PublishRequest{
		VolumeID:    req.GetVolumeId(),
		StagingPath: req.GetStagingTargetPath(),
		TargetPath:  req.GetTargetPath(),
		Block:       req.GetVolumeCapability().GetBlock() != nil,
		ReadOnly:    req.GetReadonly(),
		MountFlags:  req.GetVolumeCapability().GetMount().GetMountFlags(),
		SingleWriter: req.GetVolumeCapability().GetAccessMode().GetMode() ==
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetTargetPath(), "target_path"); err != nil {
		return nil, err
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.dom.NodeUnpublish(ctx, req.GetVolumeId(), req.GetTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats takes no lock: it is read-only and kubelet polls it often, so
// it must not make a concurrent stage/publish fail with Aborted.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetVolumePath(), "volume_path"); err != nil {
		return nil, err
	}
	st, err := d.dom.NodeStats(ctx, req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, toStatus(err)
	}
	if st.Abnormal {
		// This spec build has no VolumeCondition to carry it, so it is an error.
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s at %s: %s",
			req.GetVolumeId(), req.GetVolumePath(), st.Message)
	}
	resp := &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: st.TotalBytes,
			Available: st.AvailableBytes, Used: st.UsedBytes}},
	}
	if !st.Block {
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES,
			Total: st.TotalInodes, Available: st.FreeInodes, Used: st.UsedInodes})
	}
	return resp, nil
}

func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetVolumePath(), "volume_path"); err != nil {
		return nil, err
	}
	r := req.GetCapacityRange()
	if err := checkCapacityRange(r); err != nil {
		return nil, err
	}
	if r.GetLimitBytes() > 0 && r.GetRequiredBytes() > r.GetLimitBytes() {
		return nil, status.Errorf(codes.OutOfRange, "required %d exceeds limit %d", r.GetRequiredBytes(), r.GetLimitBytes())
	}
	if c := req.GetVolumeCapability(); c != nil {
		if _, err := checkCapability(c); err != nil {
			return nil, err
		}
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	got, err := d.dom.NodeExpand(ctx, volume.NodeExpandRequest{
		VolumeID: req.GetVolumeId(), Path: req.GetVolumePath(),
		RequiredBytes: r.GetRequiredBytes(), LimitBytes: r.GetLimitBytes(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: got}, nil
}

func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.MaxVolumesPerNode,
		AccessibleTopology: d.topology()[0],
	}, nil
}

func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}
