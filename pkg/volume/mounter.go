package volume

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	"k8s.io/utils/exec"
)

// realMounter is the production Mounter on top of k8s.io/mount-utils; it needs root
// and is exercised only by the sanity, integration and e2e tests, unit tests use a
// fake.
type realMounter struct {
	sfm    *mount.SafeFormatAndMount
	resize *mount.ResizeFs
	exec   exec.Interface
}

// NewMounter returns the production Mounter (mount(8), mkfs, resize2fs/xfs_growfs).
func NewMounter() Mounter {
	ex := exec.New()
	return &realMounter{
		sfm:    mount.NewSafeFormatAndMount(mount.New(""), ex),
		resize: mount.NewResizeFs(ex),
		exec:   ex,
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

func (r *realMounter) MountedFrom(_ context.Context, path, devicePath string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(devicePath, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", devicePath, err)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		return false, fmt.Errorf("mount table: %w", err)
	}
	for _, m := range mounts {
		if uint32(m.Major) == unix.Major(st.Rdev) && uint32(m.Minor) == unix.Minor(st.Rdev) {
			return true, nil
		}
	}
	return false, nil
}

// GrowUnmounted grows a smaller ext filesystem offline: e2fsck -f (resize2fs
// refuses a filesystem not checked since it was last mounted, and a frozen
// snapshot's journal needs replaying), then resize2fs to the device size.
func (r *realMounter) GrowUnmounted(_ context.Context, devicePath string) error {
	smaller, err := extSmallerThanDevice(devicePath)
	if err != nil || !smaller {
		return err
	}
	out, err := r.exec.Command("e2fsck", "-f", "-p", devicePath).CombinedOutput()
	if code := exitCode(err); code > 1 { // 1: errors corrected
		return fmt.Errorf("e2fsck -f -p %s before growing it: %w: %s", devicePath, err, out)
	}
	if out, err := r.exec.Command("resize2fs", devicePath).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %w: %s", devicePath, err, out)
	}
	return nil
}

// exitCode is the exit status of a command's error (0 for nil, -1 if it did not run).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus()
	}
	return -1
}

func (r *realMounter) NeedResize(_ context.Context, devicePath, mountPath string) (bool, error) {
	need, err := r.resize.NeedResize(devicePath, mountPath)
	if err != nil {
		return false, fmt.Errorf("compare filesystem and device size of %s: %w", devicePath, err)
	}
	return need, nil
}

func (r *realMounter) ResizeFs(_ context.Context, devicePath, mountPath string) error {
	_, err := r.resize.Resize(devicePath, mountPath)
	if err == nil {
		return nil
	}
	if ext, _ := extSmallerThanDevice(devicePath); ext && !hasCapSysResource() {
		// The kernel refuses an online ext4 grow without CAP_SYS_RESOURCE
		// (the node container has it; some sandboxes do not).
		return fmt.Errorf("resize %s: online ext4 grow needs CAP_SYS_RESOURCE: %w: %w", devicePath, ErrFailedPrecondition, err)
	}
	return fmt.Errorf("resize %s: %w", devicePath, err)
}

// hasCapSysResource reports whether this process may grow a mounted ext4.
func hasCapSysResource() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_RESOURCE/32].Effective&(1<<(unix.CAP_SYS_RESOURCE%32)) != 0
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
