package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"k8s.io/klog/v2"
)

// Reconcile brings staged volumes back after the node plugin restarts. A volume
// whose serving process still runs needs nothing: no re-attach, no remount. That
// holds for the three generations of serving processes a driver meets: those a
// driver without a data plane started as its children (they outlive it unless
// its container takes them along), those the data plane keeps (they outlive the
// driver by design), and those the data plane adopted from either. Their control
// sockets answer even while the data plane replaces a server (a keeper holds the
// listener), so a volume in the middle of a restart or hand-over is never taken
// for dead. A volume whose serving process is gone (it died while no keeper held
// its connection, or the data plane gave it up) has a dead loop device
// under its mounts: its mounts are unmounted, its leftovers cleaned up, it is
// attached again, the staging mount is made afresh from the new device and every
// published target is bound again with its options, so pods see the volume again
// without kubelet having to stage it anew.
//
// A mount the driver cannot see (a pod's own bind of a target, in its mount
// namespace) keeps the old, dead loop device open; that device is left to the
// kernel (it goes when that mount goes) and the volume comes back on a new one.
// A volume that cannot be brought back stays recorded as staged with its staging
// path unmounted: NodePublish refuses it (FailedPrecondition, never a bind of the
// empty staging directory) and the next NodeStage repairs it.
func (m *Manager) Reconcile(ctx context.Context) error {
	entries, err := os.ReadDir(m.stagedDir())
	if err != nil {
		return fmt.Errorf("list staged volumes: %w", err)
	}
	var errs []error
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !ValidVolumeID(id) {
			continue // temp files of an interrupted write: not ours to judge here
		}
		if err := m.reconcileVolume(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) reconcileVolume(ctx context.Context, id string) error {
	unlock, err := m.lockKey(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	st, ok, err := m.staged(id)
	if err != nil || !ok {
		return err
	}
	dir := m.volDir(id)
	if _, alive, err := m.attacher.Attached(ctx, dir); err != nil || alive {
		return err
	}
	log := klog.FromContext(ctx).WithValues("volumeID", id)
	log.Info("Serving process of a staged volume is gone; attaching it again")
	targets, err := m.targets(id, st)
	if err != nil {
		return err
	}
	// The dead mounts hold the dead loop device open: they go first, so that
	// the device can be detached.
	m.unmountDeadMounts(ctx, st, targets)
	if err := m.attacher.Detach(ctx, dir); err != nil { // cleans up after the dead process
		if !errors.Is(err, ErrFailedPrecondition) {
			return fmt.Errorf("clean up dead attachment: %w", err)
		}
		log.Info("The dead loop device is still in use by a mount outside the driver's view; the kernel frees it when that mount goes", "err", err)
	}
	if _, err := m.checkChain(ctx, id); err != nil {
		return err
	}
	dev, err := m.attacher.Attach(ctx, dir)
	if err != nil {
		return fmt.Errorf("attach again: %w", err)
	}
	if err := m.remount(ctx, st, targets, dev); err != nil {
		return err
	}
	st.Device = dev
	return writeJSONAtomic(m.stagedPath(id), st)
}

func (m *Manager) unmountDeadMounts(ctx context.Context, st *stagedRecord, targets []publishedTarget) {
	for _, t := range targets {
		m.unmountDead(ctx, t.Path)
	}
	if !st.Block {
		m.unmountDead(ctx, st.StagingPath)
	}
}

// remount mounts a staged volume again from its new device dev.
func (m *Manager) remount(ctx context.Context, st *stagedRecord, targets []publishedTarget, dev string) error {
	source := dev
	if !st.Block {
		if err := m.stageFilesystem(ctx, dev, st); err != nil {
			return fmt.Errorf("mount %s at %s again: %w", dev, st.StagingPath, err)
		}
		source = st.StagingPath
	}
	for _, t := range targets {
		if err := m.mounter.Mount(ctx, source, t.Path, "", t.Options); err != nil {
			return fmt.Errorf("bind %s at %s again: %w", source, t.Path, err)
		}
	}
	return nil
}

// unmountDead unmounts a mount of a lost device. It may fail (not mounted any
// more): what matters is that the next mount succeeds.
func (m *Manager) unmountDead(ctx context.Context, path string) {
	if mounted, err := m.mounter.IsMountPoint(ctx, path); err == nil && !mounted {
		return
	}
	if err := m.mounter.Unmount(ctx, path); err != nil {
		klog.FromContext(ctx).V(2).Info("Unmount of a dead mount failed", "path", path, "err", err)
	}
}
