package volume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// checkChain reads the chain of volume id's image (absolute paths, bottom..top)
// and refuses it as ErrCorrupt unless every delta is a regular file in the pool
// or in the volume's own directory (an imported image keeps its root.hds there).
// Nothing attaches, snapshots or grows a volume before this passed: a descriptor
// is a file on disk, and a path in it must never lead the driver, or the serving
// process it starts, out of the storage root.
func (m *Manager) checkChain(ctx context.Context, id string) ([]string, error) {
	chain, err := m.store.ChainFiles(ctx, m.volDir(id))
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("%w: committed, but its image has no descriptor: %w", ErrCorrupt, err)
	}
	if err != nil {
		return nil, fmt.Errorf("volume %s: read chain: %w", id, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("volume %s: the descriptor names no delta: %w", id, ErrCorrupt)
	}
	for _, p := range chain {
		if err := m.checkDeltaPath(id, p); err != nil {
			return nil, fmt.Errorf("volume %s: %w: %w", id, ErrCorrupt, err)
		}
	}
	return chain, nil
}

func (m *Manager) checkDeltaPath(id, p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("delta %q is not an absolute path", p)
	}
	clean := filepath.Clean(p) // "/root/deltas/../../etc/x" is /etc/x
	if dir := filepath.Dir(clean); dir != m.deltasDir() && dir != m.volDir(id) {
		return fmt.Errorf("delta %s is outside the storage root's pool %s and the volume's directory", p, m.deltasDir())
	}
	info, err := os.Lstat(clean)
	if err != nil {
		return fmt.Errorf("delta %s: %w", p, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("delta %s is not a regular file (%s)", p, info.Mode().Type())
	}
	return nil
}
