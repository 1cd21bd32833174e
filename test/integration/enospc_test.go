package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// TestFullStorageRoot (issue 9 item 3): the storage root lives on a small
// ext4 of its own (an image file this test loop-mounts). A writer in a
// volume fills it: it gets EIO and nothing hangs. With the root still full,
// every teardown RPC succeeds on its first call: unpublish and unstage of
// the full volume, and unpublish, unstage, snapshot delete and delete of a
// second volume. Once space is freed, the full volume's image passes
// `csi-ploop image check` and holds every byte fsynced before the disk
// filled.
func TestFullStorageRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	rootfs := smallFilesystem(t, 160*mi)
	h := newHarnessWith(t, t.TempDir(), harnessOptions{root: filepath.Join(rootfs, "root")})

	full := h.createVolume("fills-the-root", 256*mi, mountCap("ext4"), nil)
	h.stagePublish(full)
	kept := writeFiles(t, full.target, "fsynced", 4, 1<<20)
	other := h.createVolume("torn-down-while-full", 64*mi, mountCap("ext4"), nil)
	h.stagePublish(other)
	writeFiles(t, other.target, "other", 2, fileSize)
	snap := h.createSnapshot(other.id, "other-snap")
	ballast := filepath.Join(rootfs, "ballast")
	if err := writeDurable(rootfs, "ballast", make([]byte, 8<<20)); err != nil {
		t.Fatal(err)
	}

	err := fillUntilError(t, full.target, 512)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("writer on a full storage root got %v, want EIO", err)
	}
	t.Logf("writer stopped with %v; storage root free: %d KiB", err, freeBytes(t, rootfs)>>10)
	requireFull(t, rootfs)

	teardown := []struct {
		what string
		call func(ctx context.Context) error
	}{
		{"unpublish the full volume", func(ctx context.Context) error {
			_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: full.id, TargetPath: full.target})
			return err
		}},
		{"unstage the full volume", func(ctx context.Context) error {
			_, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: full.id, StagingTargetPath: full.staging})
			return err
		}},
		{"unpublish", func(ctx context.Context) error {
			_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: other.id, TargetPath: other.target})
			return err
		}},
		{"unstage", func(ctx context.Context) error {
			_, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: other.id, StagingTargetPath: other.staging})
			return err
		}},
		{"delete the snapshot", func(ctx context.Context) error {
			_, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
			return err
		}},
		{"delete the volume", func(ctx context.Context) error {
			_, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: other.id})
			return err
		}},
	}
	for i, step := range teardown {
		// Teardown removes records, which gives blocks back: fill them
		// again, every call starts at 0 bytes free.
		fillFile(t, filepath.Join(rootfs, fmt.Sprintf("top-up-%d", i)))
		requireFull(t, rootfs)
		ctx, cancel := rpcCtx()
		err := step.call(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s on a full storage root: %v", step.what, err)
		}
	}
	delete(h.published, full.target)
	delete(h.staged, full.staging)
	delete(h.published, other.target)
	delete(h.staged, other.staging)

	topUps, _ := filepath.Glob(filepath.Join(rootfs, "top-up-*"))
	for _, f := range append(topUps, ballast) {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	volDir := filepath.Join(h.root, "volumes", full.id)
	if out, err := exec.Command(binary, "image", "check", volDir).CombinedOutput(); err != nil {
		t.Fatalf("image check after the disk filled: %v\n%s", err, out)
	}
	h.stagePublish(full)
	checkFiles(t, full.target, kept)
	h.unpublishUnstage(full)
	h.deleteVolume(full.id)
	h.checkNoLeaks()
}

// smallFilesystem makes an ext4 of size bytes in an image file, mounts it
// (through a loop device of its own) and returns the mount point. No blocks
// are reserved for root: the driver runs as root and must see it full.
func smallFilesystem(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir() // removed after the cleanups below
	img := filepath.Join(dir, "rootfs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dev, err := loopdev.Attach(context.Background(), img, loopdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := loopdev.Detach(dev.Path); err != nil {
			t.Errorf("detach %s: %v", dev.Path, err)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt
}

// fillUntilError writes and fsyncs 1 MiB at a time into dir until a write
// or fsync fails (at most maxMiB), and returns that error. A call that hangs
// is reported after a bound far beyond anything a working system needs.
func fillUntilError(t *testing.T, dir string, maxMiB int) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.Create(filepath.Join(dir, "filler"))
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		chunk := randomBytes(1 << 20)
		for range maxMiB {
			if _, err := f.Write(chunk); err != nil {
				done <- err
				return
			}
			if err := f.Sync(); err != nil {
				done <- err
				return
			}
		}
		done <- fmt.Errorf("wrote %d MiB without an error: the storage root never filled", maxMiB)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Minute):
		t.Fatal("the writer hung on a full storage root")
		return nil
	}
}

func freeBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize // ext4 keeps some blocks for its metadata either way
}

// fillFile writes path until the filesystem has no block left.
func fillFile(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range []int{1 << 20, 4096, 1024} {
		buf := make([]byte, n)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
}

// requireFull: not one block is free.
func requireFull(t *testing.T, rootfs string) {
	t.Helper()
	if free := freeBytes(t, rootfs); free > 0 {
		t.Fatalf("the storage root has %d KiB free: not full, the test proves nothing", free>>10)
	}
}
