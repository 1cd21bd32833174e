package volume

import (
	"path/filepath"
	"slices"
	"testing"
)

func TestReconcileReattachesVolumesWhoseServerDied(t *testing.T) {
	e := newEnv(t)
	fsVol, blockVol := e.create(t, "fs", MiB), e.create(t, "blk", MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	blockTarget := filepath.Join(dir, "block-target")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: fsVol.ID, StagingPath: staging, FsType: "xfs"}))
	mustNil(t, e.m.NodePublish(ctx, PublishRequest{VolumeID: fsVol.ID, StagingPath: staging, TargetPath: target, ReadOnly: true}))
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: blockVol.ID, StagingPath: filepath.Join(dir, "bs"), Block: true}))
	mustNil(t, e.m.NodePublish(ctx, PublishRequest{VolumeID: blockVol.ID, StagingPath: filepath.Join(dir, "bs"), TargetPath: blockTarget, Block: true}))

	// A restart while the serving processes live changes nothing.
	before := e.mnt.mounts[staging]
	e.reopen(t)
	if e.mnt.mounts[staging] != before || e.att.next != 2 {
		t.Fatalf("reconcile touched a healthy volume: %v, %d attaches", e.mnt.mounts, e.att.next)
	}

	// The serving processes die (the fake forgets them), then the plugin restarts.
	e.att.mu.Lock()
	clear(e.att.attached)
	e.att.mu.Unlock()
	e.reopen(t)

	newFsDev, ok, _ := e.att.Attached(ctx, e.m.volDir(fsVol.ID))
	if !ok || newFsDev == before {
		t.Fatalf("fs volume not attached again (%q, was %q)", newFsDev, before)
	}
	if e.mnt.mounts[staging] != newFsDev || e.mnt.mounts[target] != staging ||
		!slices.Equal(e.mnt.options[target], []string{"bind", "ro"}) {
		t.Fatalf("fs mounts not restored: %v %v", e.mnt.mounts, e.mnt.options)
	}
	newBlockDev, ok, _ := e.att.Attached(ctx, e.m.volDir(blockVol.ID))
	if !ok || e.mnt.mounts[blockTarget] != newBlockDev {
		t.Fatalf("block target not bound to the new device %q: %v", newBlockDev, e.mnt.mounts)
	}
	st, _, _ := e.m.staged(fsVol.ID)
	if targets, _ := e.m.targets(fsVol.ID, st); st.Device != newFsDev || len(targets) != 1 {
		t.Fatalf("staged record not updated: %+v, targets %v", st, targets)
	}
}

func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
