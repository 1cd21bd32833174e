package driver

import (
	"cmp"
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if err := required(req.GetName(), "name"); err != nil {
		return nil, err
	}
	dreq, err := d.createRequest(req)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock("volume-name/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.dom.CreateVolume(ctx, dreq)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// createRequest validates everything of CreateVolume that does not need the domain.
func (d *Driver) createRequest(req *csi.CreateVolumeRequest) (volume.CreateVolumeRequest, error) {
	var out volume.CreateVolumeRequest
	capFs, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return out, err
	}
	p, err := parseParams(req.GetParameters())
	if err != nil {
		return out, err
	}
	if capFs != "" && p.FsType != "" && capFs != p.FsType {
		return out, invalid("fsType %q in the capability contradicts parameter %q", capFs, p.FsType)
	}
	if err := checkCapacityRange(req.GetCapacityRange()); err != nil {
		return out, err
	}
	if !topologyAllows(req.GetAccessibilityRequirements(), d.cfg.NodeID) {
		// Our storage is local to this node: we cannot provision anywhere else.
		return out, status.Errorf(codes.ResourceExhausted,
			"topology requirement does not include node %q", d.cfg.NodeID)
	}
	out = volume.CreateVolumeRequest{
		Name: req.GetName(), RequiredBytes: req.GetCapacityRange().GetRequiredBytes(),
		LimitBytes: req.GetCapacityRange().GetLimitBytes(), ClusterSize: p.ClusterSize,
		FsType: cmp.Or(capFs, p.FsType, DefaultFsType), Parameters: req.GetParameters(),
	}
	if src := req.GetVolumeContentSource(); src != nil {
		out.SourceSnapshotID = src.GetSnapshot().GetSnapshotId()
		out.SourceVolumeID = src.GetVolume().GetVolumeId()
		if out.SourceSnapshotID == "" && out.SourceVolumeID == "" {
			return out, invalid("volume content source needs a snapshot or volume id")
		}
	}
	return out, nil
}

func (d *Driver) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{TopologyKeyNode: d.cfg.NodeID}}}
}

func (d *Driver) csiVolume(v volume.Volume) *csi.Volume {
	out := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.CapacityBytes,
		VolumeContext:      map[string]string{volumeContextFs: v.FsType},
		AccessibleTopology: d.topology(),
	}
	switch {
	case v.SourceSnapshotID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnapshotID}}}
	case v.SourceVolumeID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolumeID}}}
	}
	return out
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.dom.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *Driver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	v, err := d.dom.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeResponse{Volume: d.csiVolume(v), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{}}, nil
}

func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are required")
	}
	if _, err := d.dom.GetVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	if _, err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		// Unsupported capabilities are an answer here, not an error.
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if _, err := parseParams(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	vols, next, err := d.dom.ListVolumes(ctx, req.GetStartingToken(), int(req.GetMaxEntries()))
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.csiVolume(v)})
	}
	return resp, nil
}

func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	for _, c := range req.GetVolumeCapabilities() {
		if _, err := checkCapability(c); err != nil {
			return nil, err
		}
	}
	if _, err := parseParams(req.GetParameters()); err != nil {
		return nil, err
	}
	if seg := req.GetAccessibleTopology().GetSegments(); seg != nil && seg[TopologyKeyNode] != d.cfg.NodeID {
		return &csi.GetCapacityResponse{}, nil // another node's capacity is not ours to report
	}
	free, err := d.dom.Capacity(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: free}, nil
}

func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	r := req.GetCapacityRange()
	if r == nil {
		return nil, invalid("capacity_range is required")
	}
	if err := checkCapacityRange(r); err != nil {
		return nil, err
	}
	if r.GetLimitBytes() > 0 && r.GetRequiredBytes() > r.GetLimitBytes() {
		return nil, status.Errorf(codes.OutOfRange, "required %d exceeds limit %d", r.GetRequiredBytes(), r.GetLimitBytes())
	}
	size := cmp.Or(r.GetRequiredBytes(), r.GetLimitBytes())
	if size == 0 {
		return nil, invalid("capacity_range needs required_bytes or limit_bytes")
	}
	unlock, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	got, err := d.dom.ExpandVolume(ctx, req.GetVolumeId(), size)
	if err != nil {
		return nil, toStatus(err)
	}
	if r.GetLimitBytes() > 0 && got > r.GetLimitBytes() {
		return nil, status.Errorf(codes.OutOfRange, "volume is %d bytes, above limit %d", got, r.GetLimitBytes())
	}
	// Always: this controller may not hold the volume (csi-resizer has no
	// per-node mode), and NodeExpandVolume on the node that does grows the
	// image (block volumes too) and the filesystem.
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: got, NodeExpansionRequired: true}, nil
}

func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}
