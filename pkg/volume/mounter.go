package volume

import (
	"context"
	"fmt"
	"syscall"

	mount "k8s.io/mount-utils"
	"k8s.io/utils/exec"
)

// realMounter is the production Mounter on top of k8s.io/mount-utils; it needs root
// and is exercised only by the sanity/e2e tests, unit tests use a fake.
type realMounter struct {
	sfm    *mount.SafeFormatAndMount
	resize *mount.ResizeFs
}

// NewMounter returns the production Mounter (mount(8), mkfs, resize2fs/xfs_growfs).
func NewMounter() Mounter {
	ex := exec.New()
	return &realMounter{
		sfm:    mount.NewSafeFormatAndMount(mount.New(""), ex),
		resize: mount.NewResizeFs(ex),
	}
}

func (r *realMounter) FormatAndMount(_ context.Context, source, target, fsType string, options []string) error {
	return r.sfm.FormatAndMount(source, target, fsType, options)
}

func (r *realMounter) Mount(_ context.Context, source, target, fsType string, options []string) error {
	return r.sfm.Mount(source, target, fsType, options)
}

func (r *realMounter) Unmount(_ context.Context, target string) error {
	return r.sfm.Unmount(target)
}

func (r *realMounter) IsMountPoint(_ context.Context, target string) (bool, error) {
	ok, err := r.sfm.IsMountPoint(target)
	if err != nil && isNotExist(err) {
		return false, nil
	}
	return ok, err
}

func (r *realMounter) NeedResize(_ context.Context, devicePath, mountPath string) (bool, error) {
	need, err := r.resize.NeedResize(devicePath, mountPath)
	if err != nil {
		return false, fmt.Errorf("compare filesystem and device size of %s: %w", devicePath, err)
	}
	return need, nil
}

func (r *realMounter) ResizeFs(_ context.Context, devicePath, mountPath string) error {
	if _, err := r.resize.Resize(devicePath, mountPath); err != nil {
		return fmt.Errorf("resize %s: %w", devicePath, err)
	}
	return nil
}

func (r *realMounter) Stats(_ context.Context, path string) (FsStats, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return FsStats{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := st.Bsize
	return FsStats{
		TotalBytes:     int64(st.Blocks) * bs,
		AvailableBytes: int64(st.Bavail) * bs,
		UsedBytes:      int64(st.Blocks-st.Bfree) * bs,
		TotalInodes:    int64(st.Files),
		FreeInodes:     int64(st.Ffree),
		UsedInodes:     int64(st.Files - st.Ffree),
	}, nil
}
