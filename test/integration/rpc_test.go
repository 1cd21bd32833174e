package integration

import (
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// vol is a volume of the story: its CSI ID, capability and node paths.
type vol struct {
	id      string
	cap     *csi.VolumeCapability
	staging string
	target  string
}

func (v *vol) block() bool { return v.cap.GetBlock() != nil }

// createVolume creates a volume; src may be nil, a snapshot or a volume source.
func (h *harness) createVolume(name string, size int64, c *csi.VolumeCapability, src *csi.VolumeContentSource) *vol {
	h.t.Helper()
	params := map[string]string{}
	if fs := c.GetMount().GetFsType(); fs != "" {
		params["csi.storage.k8s.io/fstype"] = fs
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: params,
		VolumeContentSource: src,
	})
	if err != nil {
		h.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	if got := resp.GetVolume().GetCapacityBytes(); got < size {
		h.t.Fatalf("CreateVolume %s: capacity %d < %d", name, got, size)
	}
	id := resp.GetVolume().GetVolumeId()
	return &vol{id: id, cap: c, staging: filepath.Join(h.tmp, "staging", name),
		target: filepath.Join(h.tmp, "pods", name, "target")}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// stagePublish stages and publishes v; the harness remembers both for cleanup.
func (h *harness) stagePublish(v *vol) {
	h.t.Helper()
	h.stage(v)
	h.publish(v)
}

func (h *harness) stage(v *vol) {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.cap})
	if err != nil {
		h.t.Fatalf("NodeStageVolume %s: %v", v.id, err)
	}
	h.staged[v.staging] = v.id
	h.noteFuseConns()
}

func (h *harness) publish(v *vol) {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.cap})
	if err != nil {
		h.t.Fatalf("NodePublishVolume %s: %v", v.id, err)
	}
	h.published[v.target] = v.id
}

// unpublishUnstage undoes stagePublish.
func (h *harness) unpublishUnstage(v *vol) {
	h.t.Helper()
	h.unpublish(v)
	h.unstage(v)
}

func (h *harness) unpublish(v *vol) {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
	if err != nil {
		h.t.Fatalf("NodeUnpublishVolume %s: %v", v.id, err)
	}
	delete(h.published, v.target)
}

func (h *harness) unstage(v *vol) {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
	if err != nil {
		h.t.Fatalf("NodeUnstageVolume %s: %v", v.id, err)
	}
	delete(h.staged, v.staging)
}

func (h *harness) createSnapshot(source, name string) *csi.Snapshot {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: source, Name: name})
	if err != nil {
		h.t.Fatalf("CreateSnapshot %s of %s: %v", name, source, err)
	}
	if !resp.GetSnapshot().GetReadyToUse() {
		h.t.Fatalf("snapshot %s not ready to use", name)
	}
	return resp.GetSnapshot()
}

func (h *harness) deleteVolume(id string) {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	if _, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		h.t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (h *harness) deleteSnapshot(id string) {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	if _, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
		h.t.Fatalf("DeleteSnapshot %s: %v", id, err)
	}
}

// listVolumeIDs pages through ListVolumes two entries at a time.
func (h *harness) listVolumeIDs() map[string]bool {
	h.t.Helper()
	ids := map[string]bool{}
	token := ""
	for {
		ctx, cancel := rpcCtx()
		resp, err := h.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		cancel()
		if err != nil {
			h.t.Fatalf("ListVolumes: %v", err)
		}
		for _, e := range resp.GetEntries() {
			ids[e.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			return ids
		}
	}
}

// stats returns the bytes usage of NodeGetVolumeStats.
func (h *harness) stats(v *vol, path string) *csi.VolumeUsage {
	h.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := h.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: path})
	if err != nil {
		h.t.Fatalf("NodeGetVolumeStats %s at %s: %v", v.id, path, err)
	}
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_BYTES {
			return u
		}
	}
	h.t.Fatalf("NodeGetVolumeStats %s: no BYTES usage in %v", v.id, resp)
	return nil
}
