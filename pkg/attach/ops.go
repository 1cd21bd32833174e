package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// handle answers one control request. The returned func runs after the
// response is written.
func (s *server) handle(req request) (response, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
	defer cancel()
	var resp response
	var err error
	switch req.Op {
	case opStatus:
		var st Status
		st, err = s.statusChecked()
		resp.Status = &st
	case opSnapshot:
		resp.GUID, err = s.snapshot(ctx, req.NewDeltaFile, req.FsFrozen)
	case opGrow:
		err = s.grow(ctx, req.Size)
	case opDetach:
		if err := s.detach(); err != nil {
			return errResponse(err), nil
		}
		return response{OK: true}, s.stop
	default:
		return errResponse(fmt.Errorf("%w: unknown operation %q", ErrInvalid, req.Op)), nil
	}
	if errors.Is(err, errLoopLost) {
		// Never act on, or hand out, a device number the kernel may have
		// given to another image: finish the teardown and say so.
		if derr := s.detach(); derr != nil {
			return errResponse(derr), nil
		}
		return errResponse(fmt.Errorf("%w: %w", ErrNotAttached, err)), s.stop
	}
	if err != nil {
		s.noteFailure()
		if f := s.failure(); f != nil && !errors.Is(err, ErrVolumeFailed) {
			err = fmt.Errorf("%w (%w)", f, err) // the failure is why it failed
		}
		return errResponse(err), nil
	}
	resp.OK = true
	return resp, nil
}

// live is checked under s.mu by every operation: the server is not being
// torn down and its loop device still backs our FUSE file.
func (s *server) live() error {
	if s.torn.loop || s.torn.done {
		return fmt.Errorf("%w: %s is being detached", ErrNotAttached, s.dir)
	}
	if ours, err := s.loopStillOurs(); err != nil {
		return err
	} else if !ours {
		s.torn.loop = true
		return fmt.Errorf("%w: %s", errLoopLost, s.dev)
	}
	return nil
}

// errLoopLost: the loop device no longer backs our FUSE file (a detach the
// kernel deferred with autoclear has completed, or someone else detached it).
var errLoopLost = errors.New("attach: the loop device was released")

func (s *server) statusChecked() (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.live(); err != nil {
		return Status{}, err
	}
	return s.status(), nil
}

// snapshot drains the FUSE requests in flight and switches the top delta.
// A filesystem on the device must be frozen meanwhile: the client does it
// (fsFrozen; it sees the mounts, which a server in another mount namespace
// does not), or else the server freezes what it sees mounted (clients
// before protocol version 2). The server's own freeze is thawed whatever
// happens.
func (s *server) snapshot(ctx context.Context, newDeltaFile string, fsFrozen bool) (guid string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failure(); err != nil {
		return "", err // a snapshot of a chain that lost writes would freeze the loss
	}
	if err := s.mergeBusy(); err != nil {
		return "", err
	}
	if err := s.live(); err != nil {
		return "", err
	}
	var frozen []*frozen
	if !fsFrozen {
		if frozen, err = freezeAll(s.dev); err != nil {
			return "", err
		}
	}
	defer func() { err = errors.Join(err, thawAll(frozen)) }()
	err = s.bm.Quiesce(ctx, func() error {
		g, err := s.img.Snapshot(image.SnapshotOptions{NewDeltaFile: newDeltaFile})
		guid = g
		return err
	})
	if err != nil {
		return "", fmt.Errorf("attach: snapshot %s: %w", s.dir, err)
	}
	s.log.Info("snapshot", "frozen", guid, "depth", s.img.Chain().Depth(), "fsFrozen", fsFrozen || len(frozen) > 0)
	return guid, nil
}

// grow raises the virtual size and makes the loop device see it; the
// filesystem on it is grown by the caller (resize2fs, xfs_growfs).
func (s *server) grow(ctx context.Context, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failure(); err != nil {
		return err
	}
	if err := s.mergeBusy(); err != nil {
		return err
	}
	if err := s.live(); err != nil {
		return err
	}
	if size <= 0 || size%4096 != 0 {
		return fmt.Errorf("%w: size %d is not a positive multiple of 4096", ErrInvalid, size)
	}
	if cur := s.img.Chain().Size(); size < cur {
		return fmt.Errorf("%w: cannot shrink from %d to %d bytes", ErrInvalid, cur, size)
	}
	if size > s.img.Chain().Size() {
		if err := s.bm.Quiesce(ctx, func() error { return s.img.Grow(size) }); err != nil {
			return fmt.Errorf("attach: grow %s: %w", s.dir, err)
		}
	}
	if err := s.bm.Resized(); err != nil {
		return fmt.Errorf("attach: grow %s: %w", s.dir, err)
	}
	if err := loopdev.SetCapacity(s.dev); err != nil {
		return fmt.Errorf("attach: grow %s: %w", s.dir, err)
	}
	s.log.Info("grown", "size", size)
	return nil
}

// detach tears down in order: loop device, FUSE mount, image, runtime
// directory. A step that fails is retried by the next detach; a mounted
// or open device is refused with ErrBusy and everything keeps serving.
func (s *server) detach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.torn.done {
		return nil
	}
	if err := s.detachLoop(); err != nil {
		return err
	}
	// Nothing can use the device any more: a merge is cancelled (it is
	// run again offline), and must have ended before the image closes.
	if !s.stopMerges(errDetaching, s.opts.RequestTimeout) {
		return fmt.Errorf("attach: detach %s: a merge did not end within %v of its cancel; try again", s.dir, s.opts.RequestTimeout)
	}
	if !s.torn.fuse {
		if err := s.closeFUSE(false); err != nil {
			if errors.Is(err, ErrBusy) {
				return err
			}
			return fmt.Errorf("attach: %w", err)
		}
		s.torn.fuse = true
	}
	if !s.torn.image {
		s.torn.image = true // Close is not retried: the chain is closed either way
		if err := s.img.Close(); err != nil {
			// The device is gone and the image released; what failed (a last
			// flush on a full disk, a volume that had already failed) leaves
			// the top marked in use, so the next open checks it. Teardown
			// must not fail for that: it would keep the volume staged for
			// good while nothing can fix it but that next open.
			s.log.Error("closing the image failed; the next attach checks it", "err", err)
		}
	}
	s.ln.Close()
	s.torn.done = true
	s.log.Info("detached", "device", s.dev)
	if err := os.RemoveAll(s.rt); err != nil {
		return fmt.Errorf("attach: remove runtime dir: %w", err)
	}
	return nil
}

func (s *server) detachLoop() error {
	if s.torn.loop {
		return nil
	}
	ours, err := s.loopStillOurs()
	if err != nil {
		return err
	}
	if ours {
		if err := deviceUnclaimed(s.dev); err != nil {
			return err
		}
		if err := loopdev.Detach(s.dev); err != nil {
			if !errors.Is(err, loopdev.ErrBusy) {
				return fmt.Errorf("attach: %w", err)
			}
			// Not mounted, but briefly open (udev, blkid): the kernel detaches
			// on the last close (autoclear). Wait for that rather than keep
			// serving a device number that is about to be given away.
			if err := s.waitLoopReleased(); err != nil {
				return err
			}
		}
	}
	s.torn.loop = true
	return nil
}

// loopStillOurs reports whether s.dev is still attached to our FUSE file.
// After a detach that was deferred (autoclear) the kernel may have freed
// the device and given the number to someone else. The file is known by
// its device and inode, not by its path: a server that took the volume
// over from another mount namespace may not see the path at all.
func (s *server) loopStillOurs() (bool, error) {
	ours, err := loopdev.Backs(s.dev, s.file.dev, s.file.ino)
	if err != nil {
		return false, fmt.Errorf("attach: %w", err)
	}
	return ours, nil
}

// loopReleaseWait bounds how long a deferred (autoclear) detach is awaited.
const loopReleaseWait = 10 * time.Second

func (s *server) waitLoopReleased() error {
	for deadline := time.Now().Add(loopReleaseWait); ; time.Sleep(20 * time.Millisecond) {
		ours, err := s.loopStillOurs()
		if err != nil || !ours {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s is still open by another process after %v (it detaches on the last close)",
				ErrBusy, s.dev, loopReleaseWait)
		}
	}
}
