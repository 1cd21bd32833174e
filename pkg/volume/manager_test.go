package volume

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

var ctx = context.Background()

func TestCreateVolumeIdempotentByName(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "pvc-1", 10*MiB)
	if !ValidVolumeID(v.ID) || v.CapacityBytes != 10*MiB || v.ClusterSize != DefaultClusterSize {
		t.Fatalf("unexpected volume %+v", v)
	}
	again := e.create(t, "pvc-1", 5*MiB) // smaller request is satisfied by the existing one
	if again.ID != v.ID {
		t.Fatalf("retry made a new volume %s != %s", again.ID, v.ID)
	}
	for _, req := range []CreateVolumeRequest{
		{Name: "pvc-1", RequiredBytes: 20 * MiB},
		{Name: "pvc-1", RequiredBytes: 10 * MiB, ClusterSize: 64 << 10},
		{Name: "pvc-1", RequiredBytes: 1, LimitBytes: 2 * MiB},
		{Name: "pvc-1", RequiredBytes: 10 * MiB, FsType: "xfs"},
	} {
		_, err := e.m.CreateVolume(ctx, req)
		wantErr(t, err, ErrAlreadyExists)
	}
	if n := e.store.called("Create"); n != 1 {
		t.Fatalf("store.Create called %d times, want 1", n)
	}
}

func TestCreateVolumeValidation(t *testing.T) {
	e := newEnv(t)
	for _, req := range []CreateVolumeRequest{
		{},
		{Name: "x", ClusterSize: 3000},
		{Name: "x", ClusterSize: 32 << 20},
		{Name: "x", SourceSnapshotID: "snap-" + hex32, SourceVolumeID: "vol-" + hex32},
	} {
		_, err := e.m.CreateVolume(ctx, req)
		wantErr(t, err, ErrInvalid)
	}
	_, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "x", RequiredBytes: 3 * MiB, LimitBytes: 2 * MiB})
	wantErr(t, err, ErrOutOfRange)
	_, err = e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "x", SourceSnapshotID: "snap-" + hex32})
	wantErr(t, err, ErrNotFound)
	_, err = e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "x", SourceSnapshotID: "../../etc"})
	wantErr(t, err, ErrNotFound)
	_, err = e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "x", SourceVolumeID: "vol-/../x"})
	wantErr(t, err, ErrNotFound)
}

const hex32 = "0123456789abcdef0123456789abcdef"

func TestResolveCapacity(t *testing.T) {
	cases := []struct {
		req, lim, min, want int64
		err                 error
	}{
		{0, 0, 0, DefaultCapacity, nil},
		{1, 0, 0, MiB, nil},
		{MiB + 1, 0, 0, 2 * MiB, nil},
		{0, 10 * MiB, 0, 10 * MiB, nil},
		{0, 0, 3 * GiBForTest, 3 * GiBForTest, nil},
		{MiB, 0, 5 * MiB, 5 * MiB, nil},
		{0, 0, 4 * MiB, 4 * MiB, nil},
		{0, 2 * MiB, 0, 2 * MiB, nil},
		{MiB, 2 * MiB, 5 * MiB, 0, ErrOutOfRange},
		{MiB + 1, MiB + 2, 0, 0, ErrOutOfRange},
		{2 * MiB, MiB, 0, 0, ErrOutOfRange},
		{-1, 0, 0, 0, ErrInvalid},
	}
	for _, c := range cases {
		got, err := ResolveCapacity(c.req, c.lim, c.min)
		if c.err != nil {
			wantErr(t, err, c.err)
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ResolveCapacity(%d,%d,%d) = %d, %v; want %d", c.req, c.lim, c.min, got, err, c.want)
		}
	}
}

const GiBForTest = 1 << 30

func TestMalformedIDsNeverBecomePaths(t *testing.T) {
	e := newEnv(t)
	outside := filepath.Join(filepath.Dir(e.root), "victim")
	if err := os.MkdirAll(outside, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "../victim", "vol-../../victim", "vol-" + hex32 + "/..", "VOL-" + hex32, "snap-" + hex32} {
		if err := e.m.DeleteVolume(ctx, id); err != nil {
			t.Errorf("DeleteVolume(%q) = %v, want nil", id, err)
		}
		_, err := e.m.GetVolume(ctx, id)
		wantErr(t, err, ErrNotFound)
		_, err = e.m.ExpandVolume(ctx, id, MiB)
		wantErr(t, err, ErrNotFound)
		_, err = e.m.CreateSnapshot(ctx, id, "s")
		wantErr(t, err, ErrNotFound)
		err = e.m.NodeStage(ctx, StageRequest{VolumeID: id, StagingPath: t.TempDir()})
		wantErr(t, err, ErrNotFound)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("path outside root touched: %v", err)
	}
}

func TestRestartKnowsEverything(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "a", MiB)
	s := e.snap(t, v.ID, "s1")
	c, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "b", SourceSnapshotID: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.reopen(t)
	if got := e.create(t, "a", MiB); got.ID != v.ID {
		t.Fatalf("after restart name a -> %s, want %s", got.ID, v.ID)
	}
	if got := e.snap(t, v.ID, "s1"); got.ID != s.ID || got.SizeBytes != s.SizeBytes {
		t.Fatalf("after restart snapshot s1 = %+v, want %+v", got, s)
	}
	got, err := e.m.GetVolume(ctx, c.ID)
	if err != nil || got.SourceSnapshotID != s.ID || got.Name != "b" {
		t.Fatalf("GetVolume(clone) = %+v, %v", got, err)
	}
	e.checkConsistent(t)
}

func TestOpenDropsTempFiles(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "a", MiB)
	for _, tmp := range []string{
		e.m.volMetaPath(v.ID) + ".tmp",          // pkg/durable's temp file
		e.m.volMetaPath(v.ID) + ".tmp-deadbeef", // an earlier version's
	} {
		if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.reopen(t)
		if _, err := os.Stat(tmp); !isNotExist(err) {
			t.Fatalf("temp record survived Open: %v", err)
		}
	}
}

func TestSnapshotIdempotentAndOnline(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "a", 4*MiB)
	s1 := e.snap(t, v.ID, "s")
	if s2 := e.snap(t, v.ID, "s"); s2.ID != s1.ID {
		t.Fatalf("snapshot retry made %s, want %s", s2.ID, s1.ID)
	}
	other := e.create(t, "b", MiB)
	_, err := e.m.CreateSnapshot(ctx, other.ID, "s")
	wantErr(t, err, ErrAlreadyExists)
	if s1.SizeBytes <= 0 || s1.SizeBytes > v.CapacityBytes || s1.SourceVolumeID != v.ID {
		t.Fatalf("snapshot %+v", s1)
	}
	if _, err := e.att.Attach(ctx, e.m.volDir(v.ID)); err != nil {
		t.Fatal(err)
	}
	before := e.store.called("SnapshotDir")
	e.snap(t, v.ID, "online")
	if e.att.snapshots != 1 || e.store.called("SnapshotDir") != before {
		t.Fatalf("online snapshot went through the store (attacher %d)", e.att.snapshots)
	}
	e.checkConsistent(t)
}

func TestExpand(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "a", 4*MiB)
	got, err := e.m.ExpandVolume(ctx, v.ID, 2*MiB)
	if err != nil || got != 4*MiB || e.store.called("GrowDir") != 0 {
		t.Fatalf("shrink request: %d, %v (GrowDir %d)", got, err, e.store.called("GrowDir"))
	}
	if got, err = e.m.ExpandVolume(ctx, v.ID, 8*MiB+1); err != nil || got != 9*MiB {
		t.Fatalf("offline expand: %d, %v", got, err)
	}
	if d, _ := readDesc(e.m.volDir(v.ID)); d.Size != 9*MiB {
		t.Fatalf("image size %d", d.Size)
	}
	if _, err := e.att.Attach(ctx, e.m.volDir(v.ID)); err != nil {
		t.Fatal(err)
	}
	if got, err = e.m.ExpandVolume(ctx, v.ID, 16*MiB); err != nil || got != 16*MiB || e.att.grows != 1 {
		t.Fatalf("online expand: %d, %v, grows %d", got, err, e.att.grows)
	}
	e.reopen(t)
	if v, _ := e.m.GetVolume(ctx, v.ID); v.CapacityBytes != 16*MiB {
		t.Fatalf("capacity after restart %d", v.CapacityBytes)
	}
	_, err = e.m.ExpandVolume(ctx, v.ID, 0)
	wantErr(t, err, ErrInvalid)
}

func TestDeleteInUseVolume(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "a", MiB)
	if err := e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: filepath.Join(t.TempDir(), "st")}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.m.DeleteVolume(ctx, v.ID), ErrFailedPrecondition)
	e.att.attached = map[string]string{e.m.volDir(v.ID): "/dev/loop9"}
	if err := os.Remove(e.m.stagedPath(v.ID)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.m.DeleteVolume(ctx, v.ID), ErrFailedPrecondition)
	e.att.attached = map[string]string{}
	if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	e.checkConsistent(t)
}

func TestCreateFailureCleansUp(t *testing.T) {
	e := newEnv(t)
	e.store.fail["Create"] = os.ErrPermission
	_, err := e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "a", RequiredBytes: MiB})
	wantErr(t, err, os.ErrPermission)
	delete(e.store.fail, "Create")
	e.checkConsistent(t)
	if n := len(listNames(t, e.m.volumesDir())); n != 0 {
		t.Fatalf("%d volume dirs left", n)
	}
}

func TestCapacity(t *testing.T) {
	e := newEnv(t)
	c, err := e.m.Capacity(ctx)
	if err != nil || c <= 0 {
		t.Fatalf("Capacity = %d, %v", c, err)
	}
}

func TestXFSVolumesAreBigEnoughToFormat(t *testing.T) {
	e := newEnv(t)
	v, err := e.m.CreateVolume(context.Background(), CreateVolumeRequest{Name: "x", RequiredBytes: 64 << 20, FsType: "xfs"})
	if err != nil || v.CapacityBytes != minXFSBytes {
		t.Fatalf("xfs volume of 64 MiB asked: %+v %v", v, err)
	}
	_, err = e.m.CreateVolume(context.Background(), CreateVolumeRequest{Name: "y", RequiredBytes: 64 << 20, LimitBytes: 128 << 20, FsType: "xfs"})
	wantErr(t, err, ErrOutOfRange)
	if v, err := e.m.CreateVolume(context.Background(), CreateVolumeRequest{Name: "z", RequiredBytes: 64 << 20}); err != nil || v.CapacityBytes != 64<<20 {
		t.Fatalf("ext4 volume: %+v %v", v, err)
	}
}
