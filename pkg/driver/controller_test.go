package driver

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

func createReq() *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               "pvc-1",
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("", snw)},
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 10 * volume.MiB},
		Parameters: map[string]string{
			"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pv/name": "pv-1",
		},
	}
}

func deleteReq(id string) *csi.DeleteVolumeRequest { return &csi.DeleteVolumeRequest{VolumeId: id} }

func getVolReq(id string) *csi.ControllerGetVolumeRequest {
	return &csi.ControllerGetVolumeRequest{VolumeId: id}
}

func TestCreateVolumeValidation(t *testing.T) {
	cases := map[string]struct {
		mutate func(r *csi.CreateVolumeRequest)
		code   codes.Code
	}{
		"ok":              {func(*csi.CreateVolumeRequest) {}, codes.OK},
		"no name":         {func(r *csi.CreateVolumeRequest) { r.Name = "" }, codes.InvalidArgument},
		"no capabilities": {func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }, codes.InvalidArgument},
		"nil capability":  {func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{nil} }, codes.InvalidArgument},
		"multi node": {func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}
		}, codes.InvalidArgument},
		"no access type": {func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{{AccessMode: &csi.VolumeCapability_AccessMode{Mode: snw}}}
		}, codes.InvalidArgument},
		"btrfs":            {func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = mountCap("btrfs", snw) }, codes.InvalidArgument},
		"unknown param":    {func(r *csi.CreateVolumeRequest) { r.Parameters["replicas"] = "3" }, codes.InvalidArgument},
		"bad clusterSize":  {func(r *csi.CreateVolumeRequest) { r.Parameters["clusterSize"] = "100Ki" }, codes.InvalidArgument},
		"huge clusterSize": {func(r *csi.CreateVolumeRequest) { r.Parameters["clusterSize"] = "32Mi" }, codes.InvalidArgument},
		"bad fstype param": {func(r *csi.CreateVolumeRequest) { r.Parameters[ParamFsType] = "ntfs" }, codes.InvalidArgument},
		"fs contradiction": {func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0] = mountCap("xfs", snw)
			r.Parameters[ParamFsType] = "ext4"
		}, codes.InvalidArgument},
		"negative size": {func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = -1 }, codes.InvalidArgument},
		"other node": {func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKeyNode: "node-b"}}}}
		}, codes.ResourceExhausted},
		"this node": {func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{
				{Segments: map[string]string{TopologyKeyNode: "node-b"}}, {Segments: map[string]string{TopologyKeyNode: "node-a"}}}}
		}, codes.OK},
		"empty source": {func(r *csi.CreateVolumeRequest) { r.VolumeContentSource = &csi.VolumeContentSource{} }, codes.InvalidArgument},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dom := &fakeDomain{}
			r := createReq()
			c.mutate(r)
			resp, err := newTestDriver(t, dom).CreateVolume(ctx, r)
			wantCode(t, err, c.code)
			if err == nil && resp.GetVolume().GetAccessibleTopology()[0].GetSegments()[TopologyKeyNode] != "node-a" {
				t.Fatalf("topology %v", resp.GetVolume().GetAccessibleTopology())
			}
		})
	}
}

func TestCreateVolumePassesParameters(t *testing.T) {
	dom := &fakeDomain{}
	d := newTestDriver(t, dom)
	r := createReq()
	r.Parameters["clusterSize"] = "64Ki"
	r.CapacityRange.LimitBytes = 20 * volume.MiB
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-9"}}}
	resp, err := d.CreateVolume(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	got := dom.create
	if got.ClusterSize != 64<<10 || got.FsType != "ext4" || got.LimitBytes != 20*volume.MiB ||
		got.RequiredBytes != 10*volume.MiB || got.SourceSnapshotID != "snap-9" {
		t.Fatalf("domain request %+v", got)
	}
	if resp.Volume.GetContentSource().GetSnapshot().GetSnapshotId() != "snap-9" || resp.Volume.VolumeContext["fsType"] != "ext4" {
		t.Fatalf("response %v", resp.Volume)
	}
	r.Parameters = map[string]string{ParamFsType: "xfs", "clusterSize": "1048576"}
	r.VolumeCapabilities = []*csi.VolumeCapability{blockCap()}
	if _, err := d.CreateVolume(ctx, r); err != nil || dom.create.FsType != "xfs" || dom.create.ClusterSize != volume.MiB {
		t.Fatalf("%v %+v", err, dom.create)
	}
}

func TestControllerRequiredFields(t *testing.T) {
	d := newTestDriver(t, &fakeDomain{})
	_, err := d.DeleteVolume(ctx, deleteReq(""))
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "v"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: "v"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: "v", Name: "s", Parameters: map[string]string{"x": "y"}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "v"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: 1}})
	wantCode(t, err, codes.InvalidArgument)
}

func TestValidateVolumeCapabilities(t *testing.T) {
	d := newTestDriver(t, &fakeDomain{})
	resp, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: "v", VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs", snw)}})
	if err != nil || resp.Confirmed == nil {
		t.Fatalf("%v %v", resp, err)
	}
	resp, err = d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: "v", VolumeCapabilities: []*csi.VolumeCapability{mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)}})
	if err != nil || resp.Confirmed != nil || resp.Message == "" {
		t.Fatalf("multi-node confirmed: %v %v", resp, err)
	}
}

func TestControllerExpand(t *testing.T) {
	dom := &fakeDomain{}
	d := newTestDriver(t, dom)
	req := &csi.ControllerExpandVolumeRequest{VolumeId: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: 5 * volume.MiB},
		VolumeCapability: mountCap("", snw)}
	resp, err := d.ControllerExpandVolume(ctx, req)
	if err != nil || resp.CapacityBytes != 5*volume.MiB || !resp.NodeExpansionRequired {
		t.Fatalf("mount expand %v %v", resp, err)
	}
	// Block too: the node that holds the volume grows it (issue 9 item 8).
	req.VolumeCapability = blockCap()
	if resp, err = d.ControllerExpandVolume(ctx, req); err != nil || !resp.NodeExpansionRequired {
		t.Fatalf("block expand %v %v", resp, err)
	}
	dom.expandTo = 9 * volume.MiB // the volume is already larger than the limit
	req.CapacityRange.LimitBytes = 6 * volume.MiB
	_, err = d.ControllerExpandVolume(ctx, req)
	wantCode(t, err, codes.OutOfRange)
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: 9, LimitBytes: 8}
	_, err = d.ControllerExpandVolume(ctx, req)
	wantCode(t, err, codes.OutOfRange)
}

func TestGetCapacity(t *testing.T) {
	d := newTestDriver(t, &fakeDomain{})
	resp, err := d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil || resp.AvailableCapacity != 1<<40 {
		t.Fatalf("%v %v", resp, err)
	}
	resp, err = d.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKeyNode: "node-b"}}})
	if err != nil || resp.AvailableCapacity != 0 {
		t.Fatalf("other node: %v %v", resp, err)
	}
	_, err = d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"bogus": "1"}})
	wantCode(t, err, codes.InvalidArgument)
}

func TestListPagination(t *testing.T) {
	dom := &fakeDomain{vols: []volume.Volume{{ID: "a"}, {ID: "b"}}, next: "c",
		snaps: []volume.Snapshot{{ID: "s1", SourceVolumeID: "a"}}}
	d := newTestDriver(t, dom)
	resp, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: "a"})
	if err != nil || len(resp.Entries) != 2 || resp.NextToken != "c" || dom.gotMax != 2 || dom.gotToken != "a" {
		t.Fatalf("%v %v (max %d token %q)", resp, err, dom.gotMax, dom.gotToken)
	}
	_, err = d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
	wantCode(t, err, codes.InvalidArgument)
	sresp, err := d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 1, SourceVolumeId: "a", SnapshotId: "s1"})
	if err != nil || len(sresp.Entries) != 1 || !sresp.Entries[0].Snapshot.ReadyToUse || dom.filter.SourceVolumeID != "a" || dom.filter.SnapshotID != "s1" {
		t.Fatalf("%v %v %+v", sresp, err, dom.filter)
	}
	_, err = d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: -5})
	wantCode(t, err, codes.InvalidArgument)
	dom.err = volume.ErrBadToken
	_, err = d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "zzz"})
	wantCode(t, err, codes.Aborted)
}

func TestCreateSnapshot(t *testing.T) {
	d := newTestDriver(t, &fakeDomain{})
	resp, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: "vol-1", Name: "s",
		Parameters: map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "x"}})
	if err != nil || !resp.Snapshot.ReadyToUse || resp.Snapshot.SizeBytes != 42 || resp.Snapshot.CreationTime == nil {
		t.Fatalf("%v %v", resp, err)
	}
}
