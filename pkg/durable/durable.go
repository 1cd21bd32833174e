// Package durable writes files so that a crash leaves either the old or the
// new content, never a torn file: temp file, fsync, rename, fsync of the
// directory. It is the one implementation of that sequence in the project
// (image descriptors and deltas, metadata records).
//
// The file system is a seam so that crash harnesses can cut persistence off
// after any step.
package durable

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// File is what WriteFile needs from a freshly created file.
type File interface {
	io.WriterAt
	Sync() error
	Close() error
}

// FS is the file system WriteFile works on.
type FS interface {
	// CreateFile makes a new file; it fails if path exists.
	CreateFile(path string) (File, error)
	Rename(oldPath, newPath string) error
	// Remove deletes path; a missing file is not an error.
	Remove(path string) error
	// SyncDir makes creations, renames and removals in dir durable.
	SyncDir(dir string) error
}

// TempSuffix is appended to the target's name for the temporary file, so a
// leftover of an interrupted write is recognisable (and removable) by name.
const TempSuffix = ".tmp"

// WriteFile replaces path with data atomically and durably: data goes to
// path+TempSuffix, which is fsynced and renamed over path, and then the
// directory is fsynced. On error the temporary file is removed (best
// effort); path keeps its old content unless the rename happened.
func WriteFile(fsys FS, path string, data []byte) error {
	return WriteFileWith(fsys, path, func(f File) error {
		_, err := f.WriteAt(data, 0)
		return err
	})
}

// WriteFileWith is WriteFile for content produced by fill, which writes into
// the temporary file (for example a sparse file written at offsets).
func WriteFileWith(fsys FS, path string, fill func(File) error) error {
	tmp := path + TempSuffix
	if err := fsys.Remove(tmp); err != nil {
		return fmt.Errorf("write %s: remove stale temp file: %w", path, err)
	}
	f, err := fsys.CreateFile(tmp)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := fsys.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Remove deletes path (a missing file is fine) and fsyncs its directory, so
// the removal survives a crash. Removing needs no free space, which is why
// teardown paths prefer removing a record to rewriting it.
func Remove(fsys FS, path string) error {
	if err := fsys.Remove(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := fsys.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// OS is the real file system.
type OS struct{}

var _ FS = OS{}

// CreateFile implements FS.
func (OS) CreateFile(path string) (File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
}

// Rename implements FS.
func (OS) Rename(oldPath, newPath string) error { return os.Rename(oldPath, newPath) }

// Remove implements FS.
func (OS) Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// SyncDir implements FS.
func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
