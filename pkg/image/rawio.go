package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/csi-ploop/csi-ploop/pkg/durable"
	"golang.org/x/sys/unix"
)

// Import makes dir an image directory holding the raw disk image rawPath.
// Holes and all-zero clusters of the raw file stay unallocated. The image is
// built in a temporary directory and renamed into place, so dir never holds
// a half-imported image.
func Import(rawPath, dir string, opts CreateOptions) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("import into %s: %w (not empty)", dir, os.ErrExist)
	}
	if filepath.IsAbs(opts.DeltaFile) {
		return fmt.Errorf("%w: import needs a delta file inside the directory", ErrInvalid)
	}
	tmp := filepath.Clean(dir) + ".importing"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := importInto(rawPath, tmp, opts); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	_ = os.Remove(dir) // an empty directory the caller made is replaced
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return NewOSFS(false).SyncDir(filepath.Dir(filepath.Clean(dir)))
}

func importInto(rawPath, dir string, opts CreateOptions) error {
	src, err := os.Open(rawPath)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	size := (st.Size() + SectorSize - 1) / SectorSize * SectorSize
	if err := Create(dir, size, opts); err != nil {
		return err
	}
	img, err := OpenDir(dir, OpenOptions{FS: opts.FS})
	if err != nil {
		return err
	}
	err = copyData(img.Chain(), src, st.Size())
	if err == nil {
		err = img.Chain().Flush()
	}
	return errors.Join(err, img.Close())
}

// copyData copies the data regions of src into the chain, cluster by cluster,
// skipping holes (SEEK_DATA) and clusters that are all zeros.
func copyData(c *Chain, src *os.File, size int64) error {
	buf := make([]byte, c.ClusterSize())
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			data = off // no SEEK_DATA here: read everything
		}
		off = data / c.cs * c.cs
		n, err := src.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s: %w", src.Name(), err)
		}
		if n > 0 && !allZero(buf[:n]) {
			if _, err := c.WriteAt(buf[:n], off); err != nil {
				return err
			}
		}
		off += c.cs
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Export writes the chain's virtual disk to rawPath as a sparse raw file:
// unallocated and all-zero clusters become holes. The file appears whole
// (written under a temporary name, synced and renamed: pkg/durable).
func Export(c *Chain, rawPath string) error {
	err := durable.WriteFileWith(durable.OS{}, rawPath, func(f durable.File) error {
		return exportTo(c, f.(*os.File)) // durable.OS creates *os.File
	})
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

func exportTo(c *Chain, dst *os.File) error {
	size := c.Size()
	if err := dst.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, c.ClusterSize())
	for off := int64(0); off < size; off += c.cs {
		if !c.allocated(uint32(off / c.cs)) {
			continue
		}
		n, err := c.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if allZero(buf[:n]) {
			continue
		}
		if _, err := dst.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return nil
}

// allocated reports whether any delta of the chain holds cluster vc.
func (c *Chain) allocated(vc uint32) bool {
	_, ok := c.m.get(vc)
	return ok
}

// OpenSnapshot opens, read-only, the chain of an image directory as it was
// when snapshot guid was taken (guid's delta and everything below it).
func OpenSnapshot(dir, guid string) (*Chain, error) {
	desc, err := ReadDescriptor(dir)
	if err != nil {
		return nil, err
	}
	chain, err := desc.Chain()
	if err != nil {
		return nil, err
	}
	for i, img := range chain {
		if sameGUID(img.GUID, guid) {
			files := make([]string, i+1)
			for k := range files {
				files[k] = resolve(dir, chain[k].File)
			}
			return OpenChain(files, ChainOptions{ReadOnly: true})
		}
	}
	return nil, fmt.Errorf("%w: no snapshot %s in %s", ErrNotFound, guid, dir)
}
