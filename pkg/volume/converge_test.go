package volume

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestRetriedStageRedoesAFailedGrow (issue 9 item 2): a stage whose
// filesystem grow fails answers the error and leaves no staging mount, so
// that a retry does every step again instead of answering OK over a
// filesystem smaller than the volume.
func TestRetriedStageRedoesAFailedGrow(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "restored-larger", 4*MiB)
	staging := filepath.Join(t.TempDir(), "staging")
	const dev = "/dev/loop0" // the fake attacher's first device
	e.mnt.needResize[dev] = true
	e.mnt.resizeErr[dev] = errors.New("resize2fs: Permission denied to resize filesystem")
	req := StageRequest{VolumeID: v.ID, StagingPath: staging, FsType: "xfs"}
	for i := range 2 {
		if err := e.m.NodeStage(ctx, req); err == nil {
			t.Fatalf("stage %d answered OK although the filesystem was not grown", i)
		}
		if ok, _ := e.mnt.IsMountPoint(ctx, staging); ok {
			t.Fatalf("stage %d failed but left the staging mount", i)
		}
	}
	delete(e.mnt.resizeErr, dev)
	if err := e.m.NodeStage(ctx, req); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(e.mnt.resized, []string{dev + "@" + staging}) || e.mnt.mounts[staging] != dev {
		t.Fatalf("after the retry: resized %v, mounts %v", e.mnt.resized, e.mnt.mounts)
	}
}

// TestStageGrowsExt4BeforeMounting: a filesystem that grows offline (ext4)
// is grown before it is mounted, which needs no CAP_SYS_RESOURCE.
func TestStageGrowsExt4BeforeMounting(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "restored-larger", 4*MiB)
	const dev = "/dev/loop0"
	e.mnt.needResize[dev], e.mnt.offline[dev] = true, true
	e.mnt.resizeErr[dev] = errors.New("no online resize here")
	if err := e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: filepath.Join(t.TempDir(), "s")}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(e.mnt.grownOffline, []string{dev}) {
		t.Fatalf("grown offline: %v", e.mnt.grownOffline)
	}
}

// TestStageReplacesAStaleStagingMount: a staging path mounted from a
// device the volume no longer has (its serving process died) is mounted
// again from the current device.
func TestStageReplacesAStaleStagingMount(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	staging := filepath.Join(t.TempDir(), "staging")
	req := StageRequest{VolumeID: v.ID, StagingPath: staging}
	mustNil(t, e.m.NodeStage(ctx, req))
	e.att.mu.Lock()
	clear(e.att.attached) // the serving process died; its device is gone
	e.att.mu.Unlock()
	mustNil(t, e.m.NodeStage(ctx, req))
	dev, _, _ := e.att.Attached(ctx, e.m.volDir(v.ID))
	if dev == "/dev/loop0" || e.mnt.mounts[staging] != dev {
		t.Fatalf("staging %q, current device %q", e.mnt.mounts[staging], dev)
	}
}

// TestPublishNeedsTheStagingMountOfTheVolume (issue 9 item 10): publish
// binds the staging path only when it is a mount of the volume's current
// device; an unmounted staging directory lives on the node's own disk.
func TestPublishNeedsTheStagingMountOfTheVolume(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	mustNil(t, e.mnt.Unmount(ctx, staging)) // e.g. a reconcile that could not mount it again
	pub := PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target}
	wantErr(t, e.m.NodePublish(ctx, pub), ErrFailedPrecondition)
	if ok, _ := e.mnt.IsMountPoint(ctx, target); ok {
		t.Fatal("the empty staging directory was bound")
	}
	e.att.mu.Lock()
	clear(e.att.attached)
	e.att.mu.Unlock()
	wantErr(t, e.m.NodePublish(ctx, pub), ErrFailedPrecondition) // not attached at all
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	mustNil(t, e.m.NodePublish(ctx, pub))
}

// TestReconcileGoesOnWhenTheDeadDeviceIsHeld (issue 9 item 10): a pod's
// own bind of a target keeps the dead loop device open, so its cleanup is
// refused; the volume is attached and mounted again all the same.
func TestReconcileGoesOnWhenTheDeadDeviceIsHeld(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	mustNil(t, e.m.NodePublish(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target}))
	e.att.mu.Lock()
	clear(e.att.attached)
	e.att.detachErr = errors.New("stale /dev/loop0 (autoclear=true): " + ErrFailedPrecondition.Error())
	e.att.detachErr = errors.Join(e.att.detachErr, ErrFailedPrecondition)
	e.att.mu.Unlock()
	e.reopen(t)
	dev, ok, _ := e.att.Attached(ctx, e.m.volDir(v.ID))
	if !ok || e.mnt.mounts[staging] != dev || e.mnt.mounts[target] != staging {
		t.Fatalf("volume not brought back: attached %q %v, mounts %v", dev, ok, e.mnt.mounts)
	}
}

// TestPublishRecordsBeforeBinding (issue 9 item 3): the target is recorded
// before it is bound; a failed bind removes the record again, and a retry
// of a publish whose target is mounted but not recorded records it.
func TestPublishRecordsBeforeBinding(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	// The fake's Mount fails on a target that does not exist: make the
	// target a file where a directory is needed so ensureTarget fails first.
	bad := filepath.Join(dir, "file")
	mustNil(t, os.WriteFile(bad, nil, 0o600))
	err := e.m.NodePublish(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: filepath.Join(bad, "t")})
	if err == nil {
		t.Fatal("publish under a file succeeded")
	}
	if ts, _ := e.m.targets(v.ID, nil); len(ts) != 0 {
		t.Fatalf("a failed publish left records %v", ts)
	}
	target := filepath.Join(dir, "target")
	mustNil(t, os.MkdirAll(target, 0o750))
	mustNil(t, e.mnt.Mount(ctx, staging, target, "", []string{"bind"})) // bound, never recorded
	mustNil(t, e.m.NodePublish(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target}))
	if ts, _ := e.m.targets(v.ID, nil); len(ts) != 1 || ts[0].Path != target {
		t.Fatalf("retried publish did not record the target: %v", ts)
	}
	mustNil(t, e.m.NodeUnpublish(ctx, v.ID, target))
	if _, err := os.Stat(e.m.targetPath(v.ID, target)); !isNotExist(err) {
		t.Fatalf("unpublish left the target record: %v", err)
	}
	mustNil(t, e.m.NodeUnstage(ctx, v.ID, staging))
	if entries, _ := os.ReadDir(e.m.publishedDir()); len(entries) != 0 {
		t.Fatalf("unstage left published records %v", entries)
	}
}

// TestStagedRecordsOfEarlierVersionsAreMigrated: a staged record that still
// lists its targets is split into per-target records at Open; unpublish then
// only removes files.
func TestStagedRecordsOfEarlierVersionsAreMigrated(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	mustNil(t, e.m.NodePublish(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, ReadOnly: true}))
	// Rewrite the records the way an earlier version kept them.
	mustNil(t, os.RemoveAll(e.m.publishedDir()))
	old := map[string]any{"volumeID": v.ID, "stagingPath": staging, "block": false, "device": "/dev/loop0",
		"fsType": "ext4", "targets": []map[string]any{{"path": target, "options": []string{"bind", "ro"}}}}
	b, _ := json.Marshal(old)
	mustNil(t, os.WriteFile(e.m.stagedPath(v.ID), b, 0o600))
	e.reopen(t)
	st, _, err := e.m.staged(v.ID)
	if err != nil || len(st.LegacyTargets) != 0 {
		t.Fatalf("staged record after migration: %+v, %v", st, err)
	}
	ts, err := e.m.targets(v.ID, st)
	if err != nil || len(ts) != 1 || ts[0].Path != target || !slices.Equal(ts[0].Options, []string{"bind", "ro"}) {
		t.Fatalf("migrated targets %v, %v", ts, err)
	}
}

// TestNodeStatsReportsAFailedVolume (issue 9 item 4): a volume whose
// serving process reports a failed sync is abnormal.
func TestNodeStatsReportsAFailedVolume(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	staging := filepath.Join(t.TempDir(), "staging")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	e.att.failures[e.m.volDir(v.ID)] = "fdatasync: input/output error"
	st, err := e.m.NodeStats(ctx, v.ID, staging)
	if err != nil || !st.Abnormal || st.Message != "volume failed: fdatasync: input/output error" {
		t.Fatalf("stats of a failed volume: %+v, %v", st, err)
	}
}

// TestDeleteVolumeCleansUpAfterItsServingProcess (issue 9 item 11):
// deleting a volume that is not attached still asks the attacher to remove
// what a dead serving process left, and refuses while that is impossible.
func TestDeleteVolumeCleansUpAfterItsServingProcess(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", MiB)
	e.att.detachErr = ErrBusy
	wantErr(t, e.m.DeleteVolume(ctx, v.ID), ErrBusy)
	if _, err := e.m.GetVolume(ctx, v.ID); err != nil {
		t.Fatalf("volume gone after a refused delete: %v", err)
	}
	e.att.detachErr = nil
	mustNil(t, e.m.DeleteVolume(ctx, v.ID))
	e.checkConsistent(t)
}
