package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"
)

func (m *Manager) publishedDir() string { return filepath.Join(m.root, "meta", "published") }

// targetsDir holds the published records of volume id (a validated ID).
func (m *Manager) targetsDir(id string) string { return filepath.Join(m.publishedDir(), id) }

func (m *Manager) targetPath(id, target string) string {
	sum := sha256.Sum256([]byte(target))
	return filepath.Join(m.targetsDir(id), hex.EncodeToString(sum[:16])+".json")
}

// staged reads the staged record of id; ok is false when the volume is not staged.
func (m *Manager) staged(id string) (*stagedRecord, bool, error) {
	rec := &stagedRecord{}
	if err := readJSON(m.stagedPath(id), rec); err != nil {
		if isNotExist(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return rec, true, nil
}

// targets returns where volume id is published, ordered by path: its published
// records, and the targets a staged record of an earlier version still lists.
func (m *Manager) targets(id string, st *stagedRecord) ([]publishedTarget, error) {
	entries, err := os.ReadDir(m.targetsDir(id))
	if err != nil && !isNotExist(err) {
		return nil, fmt.Errorf("list published targets of %s: %w", id, err)
	}
	var out []publishedTarget
	for _, e := range entries {
		if isTempRecord(e.Name()) || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		t := publishedTarget{}
		if err := readJSON(filepath.Join(m.targetsDir(id), e.Name()), &t); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	if st != nil {
		for _, t := range st.LegacyTargets {
			if !slices.ContainsFunc(out, func(o publishedTarget) bool { return o.Path == t.Path }) {
				out = append(out, t)
			}
		}
	}
	slices.SortFunc(out, func(a, b publishedTarget) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// recordTarget commits a published target before it is bound (set-up records
// before it acts).
func (m *Manager) recordTarget(id string, t publishedTarget) error {
	if err := os.MkdirAll(m.targetsDir(id), 0o750); err != nil {
		return fmt.Errorf("published records of %s: %w", id, err)
	}
	return writeJSONAtomic(m.targetPath(id, t.Path), &t)
}

// forgetTarget removes the record of a target. It needs no free space, except
// for a target only a staged record of an earlier version lists: that record
// is rewritten without it.
func (m *Manager) forgetTarget(id, target string, st *stagedRecord) error {
	if err := removeDurable(m.targetPath(id, target)); err != nil {
		return err
	}
	if st == nil || !slices.ContainsFunc(st.LegacyTargets, func(t publishedTarget) bool { return t.Path == target }) {
		return nil
	}
	st.LegacyTargets = slices.DeleteFunc(st.LegacyTargets, func(t publishedTarget) bool { return t.Path == target })
	return writeJSONAtomic(m.stagedPath(id), st)
}

// forgetVolume removes the staged record of id and every published record left
// (removals only: unstage works on a full disk).
func (m *Manager) forgetVolume(id string) error {
	entries, err := os.ReadDir(m.targetsDir(id))
	if err != nil && !isNotExist(err) {
		return fmt.Errorf("list published targets of %s: %w", id, err)
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, removeDurable(filepath.Join(m.targetsDir(id), e.Name())))
	}
	if err := os.Remove(m.targetsDir(id)); err != nil && !isNotExist(err) {
		errs = append(errs, fmt.Errorf("remove %s: %w", m.targetsDir(id), err))
	}
	errs = append(errs, removeDurable(m.stagedPath(id)))
	return errors.Join(errs...)
}

// migrateStagedRecords moves the target lists of staged records written by
// earlier versions into published records (run by Open, while the root has
// space). A record that cannot be migrated now is read as it is (targets merges
// both) and tried again at the next start.
func (m *Manager) migrateStagedRecords() error {
	ids, err := listRecords(m.stagedDir(), ValidVolumeID)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		st, ok, err := m.staged(id)
		if err != nil || !ok || len(st.LegacyTargets) == 0 {
			errs = append(errs, err)
			continue
		}
		if err := m.migrateStaged(st); err != nil {
			errs = append(errs, fmt.Errorf("migrate staged record of %s: %w", id, err))
			continue
		}
		klog.InfoS("Moved published targets to per-target records", "volumeID", id, "targets", len(st.LegacyTargets))
	}
	return errors.Join(errs...)
}

func (m *Manager) migrateStaged(st *stagedRecord) error {
	for _, t := range st.LegacyTargets {
		if err := m.recordTarget(st.VolumeID, t); err != nil {
			return err
		}
	}
	st.LegacyTargets = nil
	return writeJSONAtomic(m.stagedPath(st.VolumeID), st)
}
