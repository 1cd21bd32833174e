package volume

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestNodeMountLifecycle(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "pods", "target")
	stage := StageRequest{VolumeID: v.ID, StagingPath: staging, FsType: "xfs", MountFlags: []string{"noatime"}}
	for range 2 { // idempotent
		if err := e.m.NodeStage(ctx, stage); err != nil {
			t.Fatal(err)
		}
	}
	dev := e.mnt.mounts[staging]
	if dev == "" || e.mnt.formatted[dev] != "xfs" {
		t.Fatalf("staging not formatted+mounted: %v %v", e.mnt.mounts, e.mnt.formatted)
	}
	other := stage
	other.StagingPath = filepath.Join(dir, "elsewhere")
	wantErr(t, e.m.NodeStage(ctx, other), ErrAlreadyExists)

	pub := PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, ReadOnly: true, MountFlags: []string{"nosuid"}}
	for range 2 {
		if err := e.m.NodePublish(ctx, pub); err != nil {
			t.Fatal(err)
		}
	}
	if e.mnt.mounts[target] != staging || !slices.Equal(e.mnt.options[target], []string{"bind", "ro", "nosuid"}) {
		t.Fatalf("publish mount %q %v", e.mnt.mounts[target], e.mnt.options[target])
	}
	st, err := e.m.NodeStats(ctx, v.ID, target)
	if err != nil || st.TotalBytes != 100 || st.Abnormal {
		t.Fatalf("stats %+v %v", st, err)
	}
	if got, err := e.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: target}); err != nil || got != MiB || len(e.mnt.resized) != 1 {
		t.Fatalf("expand %d %v %v", got, err, e.mnt.resized)
	}
	for range 2 {
		if err := e.m.NodeUnpublish(ctx, v.ID, target); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(target); !isNotExist(err) {
		t.Fatal("target not removed")
	}
	wantErr(t, e.m.DeleteVolume(ctx, v.ID), ErrFailedPrecondition)
	for range 2 {
		if err := e.m.NodeUnstage(ctx, v.ID, staging); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.mnt.mounts) != 0 || len(e.att.attached) != 0 {
		t.Fatalf("left mounted/attached: %v %v", e.mnt.mounts, e.att.attached)
	}
	if err := e.m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	wantErr(t, e.m.NodeUnstage(ctx, v.ID, staging), ErrNotFound)
	wantErr(t, e.m.NodeUnpublish(ctx, v.ID, target), ErrNotFound)
}

func TestNodeBlockLifecycle(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", 2*MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "dev", "block")
	if err := e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, Block: true}); err != nil {
		t.Fatal(err)
	}
	if len(e.mnt.mounts) != 0 {
		t.Fatal("block stage mounted something")
	}
	pub := PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, Block: true}
	if err := e.m.NodePublish(ctx, pub); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(target); err != nil || info.IsDir() {
		t.Fatalf("block target must be a file: %v", err)
	}
	if e.mnt.mounts[target] != e.att.attached[e.m.volDir(v.ID)] {
		t.Fatalf("device not bound: %v", e.mnt.mounts)
	}
	st, err := e.m.NodeStats(ctx, v.ID, target)
	if err != nil || !st.Block || st.TotalBytes != 2*MiB {
		t.Fatalf("block stats %+v %v", st, err)
	}
	pub.Block = false
	wantErr(t, e.m.NodePublish(ctx, pub), ErrInvalid)
	if got, err := e.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: target}); err != nil || got != 2*MiB {
		t.Fatalf("block expand %d %v", got, err)
	}
}

func TestNodeErrors(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := t.TempDir()
	pub := PublishRequest{VolumeID: v.ID, StagingPath: filepath.Join(dir, "s"), TargetPath: filepath.Join(dir, "t")}
	wantErr(t, e.m.NodePublish(ctx, pub), ErrFailedPrecondition)
	_, err := e.m.NodeStats(ctx, v.ID, filepath.Join(dir, "missing"))
	wantErr(t, err, ErrNotFound)
	st, err := e.m.NodeStats(ctx, v.ID, dir)
	if err != nil || !st.Abnormal {
		t.Fatalf("unmounted path stats %+v %v", st, err)
	}
	_, err = e.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: dir})
	wantErr(t, err, ErrFailedPrecondition)
	_, err = e.m.NodeStats(ctx, "vol-"+hex32, dir)
	wantErr(t, err, ErrNotFound)
}

// A node process opened before the controller created the volume still finds it.
func TestNodeSeesVolumesCreatedByAnotherProcess(t *testing.T) {
	e := newEnv(t)
	node, err := Open(ctx, Options{Root: e.root, Store: e.store, Attacher: e.att, Mounter: e.mnt, SkipSweep: true})
	if err != nil {
		t.Fatal(err)
	}
	v := e.create(t, "v", MiB)
	if err := node.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: t.TempDir(), Block: true}); err != nil {
		t.Fatal(err)
	}
}

func TestStageGrowsFilesystemSmallerThanTheVolume(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "restored-larger", MiB)
	e.mnt.needResize["/dev/loop0"] = true // the first attach's device holds a smaller filesystem
	staging := filepath.Join(t.TempDir(), "staging")
	if err := e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(e.mnt.resized, []string{"/dev/loop0@" + staging}) {
		t.Fatalf("filesystem not grown at stage: %v", e.mnt.resized)
	}
}
