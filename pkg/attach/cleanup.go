package attach

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// cleanupStale removes what a dead server left in runtime directory rt:
// loop devices on its FUSE file, the FUSE mount (lazily: a dead connection
// cannot be unmounted normally while the loop device holds it) and the
// socket. A loop device that is still mounted cannot go now: the kernel
// frees it when its filesystem is unmounted; that is reported as ErrBusy
// after everything else is done.
func cleanupStale(rt string, log *slog.Logger) error {
	mnt := filepath.Join(rt, mountName)
	var busy []error
	infos, err := loopdev.ListUnder(mnt)
	if err != nil {
		return fmt.Errorf("attach: cleanup: %w", err)
	}
	for _, info := range infos {
		log.Warn("detaching the loop device of a dead server", "device", info.Path)
		if err := loopdev.Detach(info.Path); err != nil {
			busy = append(busy, fmt.Errorf("%w: stale %s: %w", ErrBusy, info.Path, err))
		}
	}
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return err
	}
	if mounted {
		log.Warn("unmounting the FUSE mount of a dead server", "mount", mnt)
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("attach: cleanup: unmount %s: %w", mnt, err)
		}
	}
	if err := os.Remove(filepath.Join(rt, socketName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("attach: cleanup: %w", err)
	}
	return errors.Join(busy...)
}

// cleanup is Client.Cleanup on an absolute dir.
func cleanup(ctx context.Context, base, dir string, log *slog.Logger) error {
	rt := runtimeDir(base, dir)
	if _, err := os.Stat(rt); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := probeDead(ctx, rt, dir); err != nil {
		return err
	}
	busy := cleanupStale(rt, log)
	if busy != nil && !errors.Is(busy, ErrBusy) {
		return busy
	}
	if err := removeRuntimeDir(rt, dir, log); err != nil {
		return errors.Join(fmt.Errorf("attach: cleanup: %w", err), busy)
	}
	return busy
}

// removeRuntimeDir removes the runtime directory of a dead server, except
// for the image's pending-allocation journal while the image exists and
// the journal holds entries: the writes the dead server acknowledged live
// in the page cache and in that journal until the next server of the image
// (or an offline operation, ReplayJournal) replays it. A journal that turns
// out stale, from another boot or for another top, is ignored then.
func removeRuntimeDir(rt, dir string, log *slog.Logger) error {
	b, err := os.ReadFile(filepath.Join(rt, journalName))
	if err != nil || !image.IsImageDir(dir) {
		return os.RemoveAll(rt)
	}
	if h, _, err := image.DecodeJournal(b); err != nil || h.Count == 0 {
		return os.RemoveAll(rt) // nothing to replay
	}
	log.Info("keeping the pending-allocation journal of a dead server for the next attach", "dir", dir)
	return removeAllBut(rt, journalName)
}

// probeDead makes sure no process serves dir: the socket does not answer
// and the image lock is free.
func probeDead(ctx context.Context, rt, dir string) error {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := call(pctx, rt, request{Op: opStatus})
	if err == nil {
		return fmt.Errorf("%w: %s (a server answers)", ErrAlreadyAttached, dir)
	}
	if !errors.Is(err, ErrNotAttached) {
		return fmt.Errorf("%w: %s: %w", ErrLocked, dir, err)
	}
	locked, err := imageLocked(dir)
	if err != nil {
		return err
	}
	if locked {
		return fmt.Errorf("%w: %s", ErrLocked, dir)
	}
	return nil
}

// imageLocked reports whether a process holds the image's lock. It probes
// the lock file only: opening the image for writing would run the crash
// recovery of its top delta (which may repair and truncate it) under the
// nose of a process that is about to serve it.
func imageLocked(dir string) (bool, error) {
	locked, err := image.IsLocked(dir)
	if err != nil {
		return false, fmt.Errorf("attach: %w", err)
	}
	return locked, nil
}

// ReplayJournal applies the pending-allocation journal that a dead serving
// process of image directory dir left in its runtime directory under
// runDir ("" = DefaultRunDir) to the closed image. Offline operations
// (snapshot, grow) call it first: their recovery of the dirty top would
// otherwise reclaim the clusters of writes that process acknowledged. No
// journal: nothing to do; an image a server holds: nothing to do either
// (that server replayed it when it opened the image).
func ReplayJournal(runDir, dir string, log *slog.Logger) error {
	abs, err := absDir(dir)
	if err != nil {
		return err
	}
	path := journalPath(runDir, abs)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	j, err := image.OpenPendingJournal(path, 0, log)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	defer j.Close()
	if err := image.ReplayJournalDir(abs, j); err != nil && !errors.Is(err, image.ErrBusy) {
		return fmt.Errorf("attach: replay the pending-allocation journal of %s: %w", abs, err)
	}
	return nil
}

// JournalPath is where a serving process of image directory dir keeps the
// image's pending-allocation journal: in its runtime directory under
// runDir ("" = DefaultRunDir), which keeps the journal when the process
// dies with entries in it (what ReplayJournal reads).
func JournalPath(runDir, dir string) (string, error) {
	abs, err := absDir(dir)
	if err != nil {
		return "", err
	}
	return journalPath(runDir, abs), nil
}

func journalPath(runDir, abs string) string {
	return filepath.Join(runtimeDir(cmp.Or(runDir, DefaultRunDir), abs), journalName)
}
