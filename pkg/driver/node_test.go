package driver

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

func TestNodeStagePublish(t *testing.T) {
	dom := &fakeDomain{}
	d := newTestDriver(t, dom)
	_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/s",
		VolumeCapability: mountCap("", snw), VolumeContext: map[string]string{"fsType": "xfs"}})
	if err != nil || dom.stage.FsType != "xfs" || dom.stage.Block || dom.stage.MountFlags[0] != "noatime" {
		t.Fatalf("%v %+v", err, dom.stage)
	}
	_, err = d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/s", VolumeCapability: blockCap()})
	if err != nil || !dom.stage.Block {
		t.Fatalf("%v %+v", err, dom.stage)
	}
	_, err = d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: "/s",
		TargetPath: "/t", VolumeCapability: mountCap("", snw), Readonly: true})
	if err != nil || !dom.publish.ReadOnly || dom.publish.TargetPath != "/t" {
		t.Fatalf("%v %+v", err, dom.publish)
	}
}

func TestNodeValidation(t *testing.T) {
	d := newTestDriver(t, &fakeDomain{})
	calls := map[string]func() error{
		"stage no id": func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{StagingTargetPath: "/s", VolumeCapability: blockCap()})
			return err
		},
		"stage no path": func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "v", VolumeCapability: blockCap()})
			return err
		},
		"stage no cap": func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/s"})
			return err
		},
		"unstage no path": func() error {
			_, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "v"})
			return err
		},
		"publish no target": func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: "/s", VolumeCapability: blockCap()})
			return err
		},
		"publish multi node": func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: "/s", TargetPath: "/t",
				VolumeCapability: mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER)})
			return err
		},
		"unpublish no target": func() error {
			_, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v"})
			return err
		},
		"stats no path": func() error {
			_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "v"})
			return err
		},
		"expand no id": func() error {
			_, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumePath: "/t"})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) { wantCode(t, call(), codes.InvalidArgument) })
	}
}

func TestNodeStats(t *testing.T) {
	dom := &fakeDomain{stats: volume.VolumeStats{FsStats: volume.FsStats{TotalBytes: 100, AvailableBytes: 60, UsedBytes: 40, TotalInodes: 9}}}
	d := newTestDriver(t, dom)
	req := &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: "/t"}
	resp, err := d.NodeGetVolumeStats(ctx, req)
	if err != nil || len(resp.Usage) != 2 || resp.Usage[0].Total != 100 || resp.Usage[1].Total != 9 {
		t.Fatalf("%v %v", resp, err)
	}
	dom.stats = volume.VolumeStats{Block: true, FsStats: volume.FsStats{TotalBytes: 5}}
	if resp, err = d.NodeGetVolumeStats(ctx, req); err != nil || len(resp.Usage) != 1 {
		t.Fatalf("block: %v %v", resp, err)
	}
	dom.stats = volume.VolumeStats{Abnormal: true, Message: "not mounted"}
	_, err = d.NodeGetVolumeStats(ctx, req)
	wantCode(t, err, codes.FailedPrecondition)
	dom.err = volume.ErrNotFound
	_, err = d.NodeGetVolumeStats(ctx, req)
	wantCode(t, err, codes.NotFound)
}

func TestNodeInfoAndCapabilities(t *testing.T) {
	dom := &fakeDomain{}
	d := newTestDriver(t, dom)
	d.cfg.MaxVolumesPerNode = 64
	info, err := d.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || info.NodeId != "node-a" || info.MaxVolumesPerNode != 64 ||
		info.AccessibleTopology.Segments[TopologyKeyNode] != "node-a" {
		t.Fatalf("%v %v", info, err)
	}
	caps, _ := d.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	want := map[csi.NodeServiceCapability_RPC_Type]bool{}
	for _, c := range caps.Capabilities {
		want[c.GetRpc().GetType()] = true
	}
	for _, c := range []csi.NodeServiceCapability_RPC_Type{csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS, csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER} {
		if !want[c] {
			t.Errorf("missing node capability %v", c)
		}
	}
	resp, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "v", VolumePath: "/t"})
	if err != nil || resp.CapacityBytes != 7*volume.MiB {
		t.Fatalf("%v %v", resp, err)
	}
}

// TestNodeExpandPassesTheCapacity: the node grows the image (issue 9 item
// 8), so it needs the capacity the resizer asked for.
func TestNodeExpandPassesTheCapacity(t *testing.T) {
	dom := &fakeDomain{}
	d := newTestDriver(t, dom)
	_, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "v", VolumePath: "/t",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 5 * volume.MiB, LimitBytes: 8 * volume.MiB}})
	want := volume.NodeExpandRequest{VolumeID: "v", Path: "/t", RequiredBytes: 5 * volume.MiB, LimitBytes: 8 * volume.MiB}
	if err != nil || dom.nodeExpand != want {
		t.Fatalf("domain got %+v, %v", dom.nodeExpand, err)
	}
	_, err = d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "v", VolumePath: "/t",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 9, LimitBytes: 8}})
	wantCode(t, err, codes.OutOfRange)
}
