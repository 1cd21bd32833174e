package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
	"github.com/csi-ploop/csi-ploop/pkg/fuse"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

// start locks the image, mounts it, attaches the loop device and listens.
// On error everything done so far is undone.
func start(ctx context.Context, dir string, opts ServeOptions) (_ *server, err error) {
	img, err := openImage(dir, runtimeDir(opts.RunDir, dir), opts.Logger.With("dir", dir))
	if err != nil {
		return nil, err
	}
	s := newServer(dir, opts, img)
	rt := s.rt
	defer func() {
		if err != nil {
			err = errors.Join(err, s.abandon())
		}
	}()
	// We hold the image lock: whatever is in rt was left by a dead server.
	if err := cleanupStale(rt, s.log); err != nil && !errors.Is(err, ErrBusy) {
		return nil, err
	}
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return nil, fmt.Errorf("attach: runtime dir: %w", err)
	}
	if err := s.attachDevice(ctx); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(rt, socketName), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("attach: control socket: %w", err)
	}
	// The socket's path outlives this server when a successor takes its
	// listener over; teardown removes it explicitly.
	ln.SetUnlinkOnClose(false)
	s.ln = ln
	return s, nil
}

// openImage opens and locks the image directory dir, with the image's
// pending-allocation journal in runtime directory rt: after a crash of the
// last server, the allocations it acknowledged but had not committed are
// replayed from there, then the top's recovery runs. Locked by another
// process: ErrAlreadyAttached.
func openImage(dir, rt string, log *slog.Logger) (*image.Image, error) {
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return nil, fmt.Errorf("attach: runtime dir: %w", err)
	}
	j, err := image.OpenPendingJournal(filepath.Join(rt, journalName), 0, log)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	img, err := image.OpenDir(dir, image.OpenOptions{Journal: j})
	if errors.Is(err, image.ErrBusy) {
		return nil, fmt.Errorf("%w: %s: %w", ErrAlreadyAttached, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("attach: open %s: %w", dir, err)
	}
	return img, nil
}

// newServer is the state of a server of image img (open, locked).
func newServer(dir string, opts ServeOptions, img *image.Image) *server {
	return &server{dir: dir, rt: runtimeDir(opts.RunDir, dir), opts: opts, img: img, mode: modeStandalone,
		stopped: make(chan struct{}), log: opts.Logger.With("dir", dir),
		health: func() error { return chainFailure(img.Chain()) }}
}

// attachDevice mounts the FUSE file and attaches a loop device to it.
func (s *server) attachDevice(ctx context.Context) error {
	bm, err := blockmap.Mount(ctx, filepath.Join(s.rt, mountName), s.img.Chain(), blockmap.Options{
		RequestTimeout: s.opts.RequestTimeout,
		Logger:         s.log,
	})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	s.bm = bm
	var st unix.Stat_t
	if err := unix.Stat(bm.FilePath(), &st); err != nil {
		return fmt.Errorf("attach: stat %s: %w", bm.FilePath(), err)
	}
	s.file.dev, s.file.ino = st.Dev, st.Ino
	info, err := loopdev.AttachInfo(ctx, bm.FilePath(), loopdev.Options{DirectIO: true, BlockSize: 4096})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	s.dev = info.Path
	return nil
}

// abandon undoes a failed start (nobody knows the device yet, so no
// filesystem can be mounted on it). It keeps the log: the client reports
// its last lines and then removes the runtime directory.
func (s *server) abandon() error {
	var errs []error
	if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	if s.dev != "" {
		// A udev probe may hold the new device for a moment: the kernel
		// then detaches it on the last close, and only after that can the
		// FUSE mount go.
		if err := loopdev.Detach(s.dev); err != nil && !errors.Is(err, loopdev.ErrBusy) {
			errs = append(errs, err)
		} else if err := s.waitLoopReleased(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.bm != nil {
		errs = append(errs, s.closeFUSE(true))
	}
	errs = append(errs, s.img.Close())
	errs = append(errs, removeAllBut(s.rt, logName))
	return errors.Join(errs...)
}

// closeFUSE unmounts the FUSE file once no loop device holds it. The kernel
// drops a released loop device's reference to the file a moment after
// sysfs says it is detached, so a busy unmount is retried for a while. A
// mount that stays busy (someone else opened the file) is, when lazy is
// set, detached lazily rather than left behind (the kernel ends the
// connection when its last user goes); otherwise the busy error is returned
// and the server keeps serving.
func (s *server) closeFUSE(lazy bool) error {
	if s.keptEver {
		return s.releaseFUSE()
	}
	deadline := time.Now().Add(fuseReleaseWait)
	for {
		err := s.bm.Close()
		if err == nil || !errors.Is(err, blockmap.ErrBusy) {
			return err
		}
		if time.Now().After(deadline) {
			if !lazy {
				return fmt.Errorf("%w: %w", ErrBusy, err)
			}
			s.log.Warn("FUSE mount still busy; detaching it lazily", "mount", filepath.Join(s.rt, mountName), "err", err)
			if err := unix.Unmount(filepath.Join(s.rt, mountName), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("attach: lazy unmount: %w", err)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// releaseFUSE ends the FUSE mount of a server that is or was kept: the
// keeper holds a descriptor of the mount's root, so an unmount would be
// refused. The loop device is released already; the server stops serving,
// lets go of its descriptors and detaches the mount lazily. The connection
// ends when the keeper lets go of its own, at our goodbye.
func (s *server) releaseFUSE() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
	defer cancel()
	if err := s.bm.Drain(ctx); err != nil && !errors.Is(err, fuse.ErrConnEnded) {
		return fmt.Errorf("attach: stop serving FUSE: %w", err)
	}
	s.bm.Close()
	err := unix.Unmount(filepath.Join(s.rt, mountName), unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("attach: unmount %s: %w", filepath.Join(s.rt, mountName), err)
	}
	return nil
}

// fuseReleaseWait bounds how long closeFUSE waits for the kernel to drop
// the last reference to the FUSE file.
const fuseReleaseWait = 5 * time.Second

// removeAllBut removes everything in dir except the file keep.
func removeAllBut(dir, keep string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Name() != keep {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
