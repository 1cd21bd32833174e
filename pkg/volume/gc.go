package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"
)

// SweepReport lists what a sweep removed and what it left alone.
type SweepReport struct {
	RemovedVolumeDirs []string
	RemovedDeltas     []string
	Unknown           []string // files in our directories we did not create; never removed
}

// references is the set of pool files still in use: every delta in the chain of a
// committed volume (from its descriptor, which the serving process may have changed)
// and every delta of a snapshot record. An error means the set may be incomplete, so
// callers must not delete anything.
func (m *Manager) references(ctx context.Context) (map[string]bool, error) {
	chains, err := m.forest(ctx)
	if err != nil {
		return nil, err
	}
	refs := map[string]bool{}
	for _, c := range chains {
		for _, p := range c.deltas {
			refs[p] = true
		}
	}
	return refs, nil
}

func (m *Manager) committed(volID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.vols[volID]
	return ok
}

// collect deletes the candidate deltas nobody references any more. It runs after
// the commit that dropped a reference, so a crash before it only leaves garbage that
// the next sweep removes; hence failures are logged, not returned.
func (m *Manager) collect(ctx context.Context, candidates []string) error {
	if len(candidates) == 0 {
		return nil
	}
	refs, err := m.references(ctx)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Delta GC skipped; the next sweep retries")
		return nil
	}
	for _, p := range candidates {
		p = filepath.Clean(p)
		if refs[p] || filepath.Dir(p) != m.deltasDir() {
			continue
		}
		if err := os.Remove(p); err != nil && !isNotExist(err) {
			klog.FromContext(ctx).Error(err, "Removing unreferenced delta", "path", p)
		}
	}
	return nil
}

// Sweep removes what interrupted operations left: volume dirs without a committed
// record and pool deltas nothing references. It excludes every creator (GC write
// lock), so it never sees files of an operation still in flight in this process.
func (m *Manager) Sweep(ctx context.Context) (SweepReport, error) {
	m.gc.Lock()
	defer m.gc.Unlock()
	var rep SweepReport
	dirErr := m.sweepVolumeDirs(&rep)
	refs, err := m.references(ctx)
	if err != nil {
		return rep, errors.Join(dirErr, fmt.Errorf("delta sweep skipped: %w", err))
	}
	return rep, errors.Join(dirErr, m.sweepDeltas(refs, &rep))
}

func (m *Manager) sweepVolumeDirs(rep *SweepReport) error {
	entries, err := os.ReadDir(m.volumesDir())
	if err != nil {
		return fmt.Errorf("list volume dirs: %w", err)
	}
	var errs []error
	for _, e := range entries {
		id := e.Name()
		if !ValidVolumeID(id) {
			rep.Unknown = append(rep.Unknown, filepath.Join(m.volumesDir(), id))
			continue
		}
		if m.committed(id) {
			continue
		}
		if err := os.RemoveAll(m.volDir(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.RemovedVolumeDirs = append(rep.RemovedVolumeDirs, id)
	}
	return errors.Join(errs...)
}

func (m *Manager) sweepDeltas(refs map[string]bool, rep *SweepReport) error {
	entries, err := os.ReadDir(m.deltasDir())
	if err != nil {
		return fmt.Errorf("list deltas: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		p := m.deltaPath(name)
		if !m.sweepable(name) {
			rep.Unknown = append(rep.Unknown, p)
			continue
		}
		if refs[p] || m.tooYoung(e) {
			continue
		}
		if err := os.Remove(p); err != nil && !isNotExist(err) {
			errs = append(errs, err)
			continue
		}
		rep.RemovedDeltas = append(rep.RemovedDeltas, name)
	}
	return errors.Join(errs...)
}

// sweepable: pool deltas and temp files derived from their names (a writer may
// create "<delta>.tmp…" next to it).
func (m *Manager) sweepable(name string) bool {
	if deltaNamePattern.MatchString(name) {
		return true
	}
	base, _, found := strings.Cut(name, ".tmp")
	return found && deltaNamePattern.MatchString(base)
}

// tooYoung protects files a serving process may be about to commit (see
// DefaultSweepGrace).
func (m *Manager) tooYoung(e os.DirEntry) bool {
	if m.grace < 0 {
		return false
	}
	info, err := e.Info()
	if err != nil {
		return true // vanished or unreadable: not ours to judge now
	}
	return m.now().Sub(info.ModTime()) < m.grace
}
