package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// DefaultSweepGrace protects delta files younger than this from the sweep: a serving
// process of an attached volume may have created a new top for an online snapshot
// whose descriptor rename has not happened yet (it runs outside our GC lock).
const DefaultSweepGrace = 10 * time.Minute

// Options configure a Manager.
type Options struct {
	Root     string
	Store    ImageStore
	Attacher Attacher
	Mounter  Mounter // only needed for node operations
	// SweepGrace: 0 means DefaultSweepGrace, negative means no grace (tests).
	SweepGrace time.Duration
	// SkipSweep: a node-only process beside a separate controller process must not
	// sweep, since it cannot see the controller's in-flight creates.
	SkipSweep bool
	// Now is injectable for tests; nil means time.Now.
	Now func() time.Time

	// inlineMerges runs merge passes in the goroutine that asks for them
	// (crash tests: a simulated crash must unwind the caller).
	inlineMerges bool
}

// Manager owns the volumes and snapshots under one storage root. It is safe for
// concurrent use; everything it knows is rebuilt from disk by Open.
type Manager struct {
	root     string
	store    ImageStore
	attacher Attacher
	mounter  Mounter
	grace    time.Duration
	now      func() time.Time

	// gc: creators (anything that makes files before committing them) hold it shared,
	// Sweep holds it exclusively.
	gc sync.RWMutex
	// keys serializes operations per volume ID, snapshot ID and name.
	keys *KeyLock

	mu        sync.Mutex // guards the maps below; never held across I/O
	vols      map[string]*volumeRecord
	snaps     map[string]*snapshotRecord
	volByName map[string]string
	snapByNm  map[string]string

	// merges runs merge passes (nil in a node-only process, which neither
	// deletes nor sweeps); stats counts what they did.
	merges *merger
	stats  mergeStats

	// crash, when set by tests, is called at named points between steps and may panic
	// to simulate a crash there.
	crash func(point string)
}

// Open loads the metadata under opts.Root (creating the layout if missing), sweeps
// leftovers of interrupted operations and starts a merge pass in the background
// (merges a crash interrupted are finished, deltas no chain needs apart are merged).
// Close stops it.
func Open(ctx context.Context, opts Options) (*Manager, error) {
	if opts.Root == "" || opts.Store == nil || opts.Attacher == nil {
		return nil, fmt.Errorf("volume.Open: root, store and attacher are required: %w", ErrInvalid)
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("root %q: %w", opts.Root, err)
	}
	m := &Manager{
		root: root, store: opts.Store, attacher: opts.Attacher, mounter: opts.Mounter,
		grace: opts.SweepGrace, now: opts.Now, keys: NewKeyLock(),
	}
	if m.grace == 0 {
		m.grace = DefaultSweepGrace
	}
	if m.now == nil {
		m.now = time.Now
	}
	if err := m.makeLayout(); err != nil {
		return nil, err
	}
	if err := m.load(); err != nil {
		return nil, err
	}
	if err := m.migrateStagedRecords(); err != nil {
		klog.FromContext(ctx).Error(err, "Staged records of an earlier version not migrated; they are read as they are", "root", root)
	}
	if opts.Mounter != nil {
		if err := m.Reconcile(ctx); err != nil {
			// Volumes that cannot be recovered stay staged; their I/O fails
			// until kubelet unstages them. Serving must go on for the others.
			klog.FromContext(ctx).Error(err, "Startup reconcile incomplete", "root", root)
		}
	}
	if opts.SkipSweep {
		return m, nil
	}
	if _, err := m.Sweep(ctx); err != nil {
		// A sweep failure only leaves garbage behind; serving must go on.
		klog.FromContext(ctx).Error(err, "Startup sweep incomplete", "root", root)
	}
	m.merges = newMerger(klog.NewContext(ctx, klog.FromContext(ctx).WithName("merge")), m.mergePass, opts.inlineMerges)
	if opts.inlineMerges {
		m.merges.runAndWait(ctx)
	} else {
		m.merges.request()
	}
	return m, nil
}

// Close stops the background merges (a merge cut short is finished or
// redone by the next Open). The Manager must not be used afterwards.
func (m *Manager) Close() error {
	if m.merges != nil {
		m.merges.close()
	}
	return nil
}

// mergeAfterDelete runs a merge pass after a delete dropped references and
// waits for it while ctx lasts, so that the caller sees the space back when
// it returns; the merges go on in the background if ctx ends first.
func (m *Manager) mergeAfterDelete(ctx context.Context) {
	if m.merges != nil {
		m.merges.runAndWait(ctx)
	}
}

// Root is the absolute storage root.
func (m *Manager) Root() string { return m.root }

func (m *Manager) makeLayout() error {
	for _, d := range []string{m.volumesDir(), m.deltasDir(), m.volMetaDir(), m.snapMetaDir(), m.stagedDir(), m.publishedDir(), m.mergesDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

func (m *Manager) volumesDir() string  { return filepath.Join(m.root, "volumes") }
func (m *Manager) deltasDir() string   { return filepath.Join(m.root, "deltas") }
func (m *Manager) volMetaDir() string  { return filepath.Join(m.root, "meta", "volumes") }
func (m *Manager) snapMetaDir() string { return filepath.Join(m.root, "meta", "snapshots") }
func (m *Manager) stagedDir() string   { return filepath.Join(m.root, "meta", "staged") }

// The path helpers below take IDs that were validated (checkVolumeID etc.) or generated.
func (m *Manager) volDir(id string) string       { return filepath.Join(m.volumesDir(), id) }
func (m *Manager) deltaPath(name string) string  { return filepath.Join(m.deltasDir(), name) }
func (m *Manager) volMetaPath(id string) string  { return filepath.Join(m.volMetaDir(), id+".json") }
func (m *Manager) snapMetaPath(id string) string { return filepath.Join(m.snapMetaDir(), id+".json") }
func (m *Manager) stagedPath(id string) string   { return filepath.Join(m.stagedDir(), id+".json") }

func (m *Manager) load() error {
	m.vols, m.snaps = map[string]*volumeRecord{}, map[string]*snapshotRecord{}
	m.volByName, m.snapByNm = map[string]string{}, map[string]string{}
	vids, err := listRecords(m.volMetaDir(), ValidVolumeID)
	if err != nil {
		return err
	}
	for _, id := range vids {
		rec := &volumeRecord{}
		if err := readJSON(m.volMetaPath(id), rec); err != nil {
			return err
		}
		if rec.ID != id {
			return fmt.Errorf("%s: id mismatch %q", m.volMetaPath(id), rec.ID)
		}
		m.vols[id], m.volByName[rec.Name] = rec, id
	}
	sids, err := listRecords(m.snapMetaDir(), ValidSnapshotID)
	if err != nil {
		return err
	}
	for _, id := range sids {
		rec := &snapshotRecord{}
		if err := readJSON(m.snapMetaPath(id), rec); err != nil {
			return err
		}
		if err := checkSnapshotRecord(id, rec); err != nil {
			return err
		}
		m.snaps[id], m.snapByNm[rec.Name] = rec, id
	}
	_, err = listRecords(m.stagedDir(), ValidVolumeID) // drops temp leftovers
	return err
}

// checkSnapshotRecord refuses records whose chain could point outside the pool.
func checkSnapshotRecord(id string, rec *snapshotRecord) error {
	if rec.ID != id {
		return fmt.Errorf("snapshot %s: id mismatch %q", id, rec.ID)
	}
	for _, n := range rec.Chain {
		if !deltaNamePattern.MatchString(n) {
			return fmt.Errorf("snapshot %s: bad delta name %q", id, n)
		}
	}
	return nil
}

// lockKey takes a keyed lock, waiting for ctx; the driver has already refused
// concurrent requests with TryLock, so waiting here only orders cross-ID operations.
func (m *Manager) lockKey(ctx context.Context, key string) (func(), error) {
	if err := m.keys.Lock(ctx, key); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", key, ErrBusy, err)
	}
	return func() { m.keys.Unlock(key) }, nil
}

func (m *Manager) crashPoint(point string) {
	if m.crash != nil {
		m.crash(point)
	}
}

func (m *Manager) volume(id string) (*volumeRecord, error) {
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.vols[id]
	if !ok {
		return nil, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	return rec, nil
}

func (m *Manager) snapshot(id string) (*snapshotRecord, error) {
	if err := checkSnapshotID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.snaps[id]
	if !ok {
		return nil, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	return rec, nil
}

// isNotExist is errors.Is(err, os.ErrNotExist), named for readability at call sites.
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
