package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
	"github.com/csi-ploop/csi-ploop/pkg/fuse"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// Start modes of a server (server.mode).
const modeStandalone = "standalone"

// errNotNeeded: a standby successor was told to stop (or lost its keeper)
// before it started: it exits without having touched anything.
var errNotNeeded = errors.New("attach: standby successor not needed")

// startKept starts a server a keeper started: fresh (as a standalone
// server, then reported to the keeper) or adopting the connection the
// keeper passed (a successor after a crash or for a hand-over), after
// waiting for "go" when it is a standby successor.
func startKept(ctx context.Context, dir string, opts ServeOptions) (*server, error) {
	var m KeepMsg
	files, err := opts.Keeper.Recv(&m)
	if err != nil {
		return nil, fmt.Errorf("attach: keeper: %w", err)
	}
	if m.Op != KeepStart {
		unixsock.CloseFiles(files)
		return nil, fmt.Errorf("%w: keeper sent %q before start", ErrInvalid, m.Op)
	}
	switch m.Mode {
	case ModeFresh:
		unixsock.CloseFiles(files)
		s, err := start(ctx, dir, opts)
		if s != nil {
			s.mode = ModeFresh
		}
		return s, err
	case ModeAdopt:
		kf := KeepFilesOf(files)
		if kf.Dev == nil || kf.Root == nil || kf.Ctl == nil || m.State == nil || len(m.State.Init) == 0 {
			kf.Close()
			return nil, fmt.Errorf("%w: adopt without descriptors or state", ErrInvalid)
		}
		resend := m.Resend
		if m.Standby {
			var err error
			if resend, err = standby(opts.Keeper, resend); err != nil {
				kf.Close()
				return nil, err
			}
		}
		return adopt(ctx, dir, opts, kf, *m.State, resend)
	default:
		unixsock.CloseFiles(files)
		return nil, fmt.Errorf("%w: start mode %q", ErrInvalid, m.Mode)
	}
}

// standby tells the keeper we are up and waits for go (or stop).
func standby(k *unixsock.MsgConn, resend bool) (bool, error) {
	if err := k.Send(KeepMsg{Op: KeepStandby}); err != nil {
		return false, fmt.Errorf("attach: keeper: %w", err)
	}
	var m KeepMsg
	files, err := k.Recv(&m)
	unixsock.CloseFiles(files)
	switch {
	case err != nil, m.Op == KeepStop:
		return false, errNotNeeded
	case m.Op != KeepGo:
		return false, fmt.Errorf("%w: keeper sent %q to a standby successor", ErrInvalid, m.Op)
	}
	return resend || m.Resend, nil
}

// adopt serves a connection that is initialised already, on the loop
// device and the control listener of the server before us: it opens the
// image (recovering a top its dead predecessor left in use), has the kernel
// re-send what a dead predecessor had taken (resend), and serves. The
// connection belongs to the keeper: a failed adopt never unmounts it.
func adopt(ctx context.Context, dir string, opts ServeOptions, kf KeepFiles, st KeepState, resend bool) (_ *server, err error) {
	defer func() { kf.Close() }() // what was not handed on
	var init fuse.InitState
	if err := json.Unmarshal(st.Init, &init); err != nil {
		return nil, fmt.Errorf("%w: INIT state: %w", ErrInvalid, err)
	}
	if ended, err := ConnectionEnded(kf.Dev); err != nil || ended {
		return nil, errors.Join(fmt.Errorf("%w: %s: the FUSE connection has ended", ErrAborted, dir), err)
	}
	connDev, err := mountDevice(kf.Root)
	if err != nil {
		return nil, err
	}
	img, err := openImage(dir, runtimeDir(opts.RunDir, dir), opts.Logger.With("dir", dir))
	if err != nil {
		return nil, err
	}
	s := newServer(dir, opts, img)
	s.mode, s.dev, s.keptEver = ModeAdopt, st.Device, true
	s.file.dev, s.file.ino = connDev, fuse.FileID
	defer func() {
		if err != nil {
			err = errors.Join(err, s.abandonAdopted())
		}
	}()
	conn := blockmap.Conn{Dev: kf.Dev, Root: kf.Root, Init: &init}
	if mnt := filepath.Join(s.rt, mountName); onMount(mnt, connDev) {
		conn.Dir = mnt // visible here: FilePath and the final unmount work
	}
	kf.Dev, kf.Root = nil, nil // Serve owns them now, also when it fails
	s.bm, err = blockmap.Serve(ctx, conn, img.Chain(), blockmap.Options{
		RequestTimeout: opts.RequestTimeout, Logger: s.log, Resend: resend,
	})
	if err != nil {
		return nil, fmt.Errorf("attach: serve the adopted connection: %w", err)
	}
	if ours, err := s.loopStillOurs(); err != nil {
		return nil, err
	} else if !ours {
		s.log.Warn("the loop device of the volume is gone; only its teardown is left", "device", s.dev)
		s.torn.loop = true
	}
	if s.ln, err = listenerOf(kf.Ctl); err != nil {
		return nil, fmt.Errorf("attach: control socket: %w", err)
	}
	return s, nil
}

// abandonAdopted undoes a failed adopt: everything of ours goes, the
// connection, its mount and its loop device stay for the keeper's next try.
func (s *server) abandonAdopted() error {
	var errs []error
	if s.ln != nil {
		s.ln.Close()
	}
	if s.bm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
		if err := s.bm.Drain(ctx); err != nil && !errors.Is(err, fuse.ErrConnEnded) {
			errs = append(errs, err)
		}
		cancel()
		errs = append(errs, s.bm.Close())
	}
	errs = append(errs, s.img.Close())
	return errors.Join(errs...)
}
