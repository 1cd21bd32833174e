package driver

import (
	"context"
	"sync"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// fakeDomain records what the driver passes and returns canned answers. holdID, when
// set, makes any call on that volume block until release is closed (signalling
// entered), to test the in-flight lock.
type fakeDomain struct {
	mu         sync.Mutex
	err        error
	holdID     string
	entered    chan struct{}
	release    chan struct{}
	vols       []volume.Volume
	snaps      []volume.Snapshot
	next       string
	gotMax     int
	gotToken   string
	create     volume.CreateVolumeRequest
	stage      volume.StageRequest
	publish    volume.PublishRequest
	stats      volume.VolumeStats
	expandTo   int64
	nodeExpand volume.NodeExpandRequest
	filter     volume.SnapshotFilter
}

func (f *fakeDomain) call(id string) error {
	if f.holdID != "" && id == f.holdID {
		f.entered <- struct{}{}
		<-f.release
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fakeDomain) CreateVolume(_ context.Context, r volume.CreateVolumeRequest) (volume.Volume, error) {
	f.create = r
	if err := f.call(r.Name); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{ID: "vol-1", Name: r.Name, CapacityBytes: max(r.RequiredBytes, volume.MiB),
		FsType: r.FsType, SourceSnapshotID: r.SourceSnapshotID, SourceVolumeID: r.SourceVolumeID}, nil
}

func (f *fakeDomain) DeleteVolume(_ context.Context, id string) error { return f.call(id) }

func (f *fakeDomain) GetVolume(_ context.Context, id string) (volume.Volume, error) {
	return volume.Volume{ID: id, CapacityBytes: volume.MiB}, f.call(id)
}

func (f *fakeDomain) ListVolumes(_ context.Context, token string, n int) ([]volume.Volume, string, error) {
	f.gotToken, f.gotMax = token, n
	return f.vols, f.next, f.call("")
}

func (f *fakeDomain) ExpandVolume(_ context.Context, id string, size int64) (int64, error) {
	if err := f.call(id); err != nil {
		return 0, err
	}
	return max(size, f.expandTo), nil
}

func (f *fakeDomain) CreateSnapshot(_ context.Context, vol, name string) (volume.Snapshot, error) {
	return volume.Snapshot{ID: "snap-1", Name: name, SourceVolumeID: vol, SizeBytes: 42}, f.call(vol)
}

func (f *fakeDomain) DeleteSnapshot(_ context.Context, id string) error { return f.call(id) }

func (f *fakeDomain) ListSnapshots(_ context.Context, flt volume.SnapshotFilter, token string, n int) ([]volume.Snapshot, string, error) {
	f.filter, f.gotToken, f.gotMax = flt, token, n
	return f.snaps, f.next, f.call("")
}

func (f *fakeDomain) Capacity(context.Context) (int64, error) { return 1 << 40, f.call("") }

func (f *fakeDomain) NodeStage(_ context.Context, r volume.StageRequest) error {
	f.stage = r
	return f.call(r.VolumeID)
}

func (f *fakeDomain) NodeUnstage(_ context.Context, id, _ string) error { return f.call(id) }

func (f *fakeDomain) NodePublish(_ context.Context, r volume.PublishRequest) error {
	f.publish = r
	return f.call(r.VolumeID)
}

func (f *fakeDomain) NodeUnpublish(_ context.Context, id, _ string) error { return f.call(id) }

func (f *fakeDomain) NodeStats(_ context.Context, id, _ string) (volume.VolumeStats, error) {
	return f.stats, f.call(id)
}

func (f *fakeDomain) NodeExpand(_ context.Context, r volume.NodeExpandRequest) (int64, error) {
	f.nodeExpand = r
	return 7 * volume.MiB, f.call(r.VolumeID)
}
