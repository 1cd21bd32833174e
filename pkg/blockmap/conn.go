package blockmap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

// Conn is a mounted FUSE connection: what a server needs to serve it, and
// what one server hands to its successor (in the same process, or over a
// unix socket with SCM_RIGHTS for the files and JSON for Init).
type Conn struct {
	// Dev is the connection's /dev/fuse descriptor (required). The
	// connection lives while any process holds a descriptor of it.
	Dev *os.File
	// Dir is the mount directory as this process sees it; "" when it is
	// not visible (another mount namespace). Close needs it.
	Dir string
	// Root is an O_PATH descriptor of the mount's root directory. With it
	// nothing needs Dir: the drain wake (statfs), Resized (statx) and the
	// connection id (fstat) go through it. Optional when Dir is set. An
	// open Root keeps the mount busy: whoever unmounts must close theirs.
	Root *os.File
	// Init is the connection's INIT state; nil means INIT is still
	// unanswered (a fresh mount), and Serve answers it.
	Init *fuse.InitState
}

// Close closes the descriptors in c (a keeper letting go, or a Conn that
// is not going to be served). It does not unmount.
func (c Conn) Close() error {
	var errs []error
	if c.Dev != nil {
		errs = append(errs, c.Dev.Close())
	}
	if c.Root != nil {
		errs = append(errs, c.Root.Close())
	}
	return errors.Join(errs...)
}

// MountConn mounts a blockmap FUSE file system on mountDir (created if
// missing) without serving it: the kernel's INIT waits in the connection
// for Serve, in this process or in another one the descriptors are passed
// to. The caller owns the returned descriptors. Must run as root.
func MountConn(ctx context.Context, mountDir string, opts Options) (Conn, error) {
	if err := ctx.Err(); err != nil {
		return Conn{}, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return Conn{}, err
	}
	dir, err := filepath.Abs(mountDir)
	if err != nil {
		return Conn{}, fmt.Errorf("blockmap: mount dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Conn{}, fmt.Errorf("blockmap: mount dir: %w", err)
	}
	dev, err := fuse.Mount(dir, fuse.MountOptions{Name: "blockmap", MaxRead: opts.MaxWrite})
	if err != nil {
		return Conn{}, fmt.Errorf("blockmap: %w", err)
	}
	root, err := openRoot(dir)
	if err != nil {
		return Conn{}, errors.Join(err, dev.Close(), unmountAbandoned(dir))
	}
	return Conn{Dev: dev, Dir: dir, Root: root}, nil
}

// openRoot opens the mount's root O_PATH: no FUSE request, so it works
// before INIT is answered.
func openRoot(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("blockmap: open mount root %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// unmountAbandoned removes a mount nobody serves (a failed start). Its
// connection is dead or about to be, so nothing is lost.
func unmountAbandoned(dir string) error {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("blockmap: unmount %s: %w", dir, err)
	}
	return nil
}

// dupFile duplicates f (close-on-exec; a child gets it through
// exec.Cmd.ExtraFiles, SCM_RIGHTS passes it regardless).
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("blockmap: dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// Conn returns what a successor needs to take over: duplicates of the
// device and root descriptors (the caller owns them and passes them on),
// the mount directory and the INIT state. Take it before Drain.
func (s *Server) Conn() (Conn, error) {
	s.closeMu.Lock() // lock order: closeMu, then rootMu
	defer s.closeMu.Unlock()
	s.rootMu.RLock()
	defer s.rootMu.RUnlock()
	if s.closed {
		return Conn{}, fmt.Errorf("blockmap: %s: server closed", s.conn.Dir)
	}
	dev, err := dupFile(s.conn.Dev)
	if err != nil {
		return Conn{}, err
	}
	c := Conn{Dev: dev, Dir: s.conn.Dir}
	if s.conn.Root != nil {
		if c.Root, err = dupFile(s.conn.Root); err != nil {
			return Conn{}, errors.Join(err, c.Close())
		}
	}
	st := s.fuse.State()
	c.Init = &st
	return c, nil
}
