package volume

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
)

// TestExpandOnAnotherNodesController (issue 9 item 8): csi-resizer has no
// per-node mode, so ControllerExpandVolume may reach a node whose storage
// root does not hold the volume. It answers the new capacity without the
// volume's files; NodeExpand on the node that holds the volume grows the
// image, commits the record and grows the filesystem.
func TestExpandOnAnotherNodesController(t *testing.T) {
	owner := newEnv(t)
	other := newEnv(t) // another node: its own root, its own processes
	v := owner.create(t, "v", 4*MiB)
	staging := filepath.Join(t.TempDir(), "staging")
	mustNil(t, owner.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))

	got, err := other.m.ExpandVolume(ctx, v.ID, 10*MiB+1)
	if err != nil || got != 11*MiB {
		t.Fatalf("controller expand on the other node: %d, %v; want 11 MiB", got, err)
	}
	if d, _ := readDesc(owner.m.volDir(v.ID)); d.Size != 4*MiB || owner.att.grows != 0 {
		t.Fatalf("the other node's controller touched the image: size %d, grows %d", d.Size, owner.att.grows)
	}
	for range 2 { // retried until done: the second call finds everything grown
		got, err = owner.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: staging, RequiredBytes: got})
		if err != nil || got != 11*MiB {
			t.Fatalf("node expand: %d, %v", got, err)
		}
	}
	if d, _ := readDesc(owner.m.volDir(v.ID)); d.Size != 11*MiB || owner.att.grows != 1 {
		t.Fatalf("image size %d after node expand (online grows %d)", d.Size, owner.att.grows)
	}
	if vol, _ := owner.m.GetVolume(ctx, v.ID); vol.CapacityBytes != 11*MiB {
		t.Fatalf("record capacity %d", vol.CapacityBytes)
	}
	if len(owner.mnt.resized) != 2 {
		t.Fatalf("filesystem grows %v", owner.mnt.resized)
	}
	owner.reopen(t)
	if vol, _ := owner.m.GetVolume(ctx, v.ID); vol.CapacityBytes != 11*MiB {
		t.Fatalf("capacity after restart %d", vol.CapacityBytes)
	}
	_, err = owner.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: staging, RequiredBytes: 64 * MiB, LimitBytes: 32 * MiB})
	wantErr(t, err, ErrOutOfRange)
	_, err = other.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: staging, RequiredBytes: 64 * MiB})
	wantErr(t, err, ErrNotFound) // not on this node
}

// TestNodeExpandOfAnUnattachedBlockVolume: NodeExpand grows offline and
// takes the access type from the staged record.
func TestNodeExpandGrowsOfflineWhenNotAttached(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "b", 2*MiB)
	got, err := e.m.NodeExpand(context.Background(), NodeExpandRequest{VolumeID: v.ID, Path: "/dev/null", RequiredBytes: 3 * MiB})
	if err != nil || got != 3*MiB || e.store.called("GrowDir") != 1 {
		t.Fatalf("offline node expand: %d, %v (GrowDir %d)", got, err, e.store.called("GrowDir"))
	}
}

// TestNodeExpandGrowsExt4OfflineWhenUnpublished: without the capability an
// online ext4 grow needs, a staged but unpublished volume is grown offline
// (unmount, grow, mount); a published one answers FailedPrecondition and
// grows at its next stage.
func TestNodeExpandGrowsExt4OfflineWhenUnpublished(t *testing.T) {
	e := newEnv(t)
	v := e.create(t, "v", 4*MiB)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	mustNil(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}))
	const dev = "/dev/loop0"
	e.mnt.resizeErr[dev] = fmt.Errorf("online ext4 grow needs CAP_SYS_RESOURCE: %w", ErrFailedPrecondition)
	e.mnt.offline[dev], e.mnt.needResize[dev] = true, true
	mustNil(t, e.m.NodePublish(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target}))
	_, err := e.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: target, RequiredBytes: 8 * MiB})
	wantErr(t, err, ErrFailedPrecondition)
	if ok, _ := e.mnt.MountedFrom(ctx, target, dev); !ok {
		t.Fatal("a published volume was unmounted to grow it")
	}
	mustNil(t, e.m.NodeUnpublish(ctx, v.ID, target))
	got, err := e.m.NodeExpand(ctx, NodeExpandRequest{VolumeID: v.ID, Path: staging, RequiredBytes: 8 * MiB})
	if err != nil || got != 8*MiB || !slices.Equal(e.mnt.grownOffline, []string{dev}) || e.mnt.mounts[staging] != dev {
		t.Fatalf("offline grow: %d, %v, grown %v, mounts %v", got, err, e.mnt.grownOffline, e.mnt.mounts)
	}
}
