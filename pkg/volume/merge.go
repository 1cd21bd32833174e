package volume

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Merge on delete. Once no chain needs a delta as a layer of its own
// (mergeplan.go), it is merged with its child and leaves every chain, so
// that a volume's depth stays at its live snapshots + 1 and the space used
// is its live data plus what live snapshots still hold. A pass merges the
// mergeable pairs one at a time: online through the serving process when
// the pair's volume is attached, offline through the image store
// otherwise, and with MergeDeltas when only snapshot chains hold the pair.
//
// Locking: a merge takes the keys of the pair's volume and of every
// snapshot whose record holds the pair (TryLock, sorted; a busy key puts the
// pair off), so nothing else reads or changes those chains meanwhile. It
// takes no GC lock: creators hold that shared while they wait for keys, so
// waiting for it exclusively with keys held would deadlock, and every chain
// holding the pair is already behind a key we hold.
//
// Crash safety: the copy never changes the content of any chain, so a crash
// during it leaves a consistent store. Rewriting the references is several
// commits (the volume's descriptor, each snapshot record); a crash between
// them leaves chains that disagree about whether the dropped delta is still
// there, and the pair would no longer look mergeable (the kept delta has
// become a tip or a branch point). An intent record, written before the
// copy, names the pair, so the next pass finishes the rewrite.

// mergeIntent is <root>/meta/merges/<child>.json.
type mergeIntent struct {
	Parent   string `json:"parent"` // pool names
	Child    string `json:"child"`
	VolumeID string `json:"volumeID,omitempty"`
	// Direction is the direction the copy took, set once it is done (the
	// kept delta holds the combined view); MergeAuto until then.
	Direction MergeDirection `json:"direction,omitempty"`
	StartedAt time.Time      `json:"startedAt"`
}

// copied reports whether the copy is done.
func (in mergeIntent) copied() bool { return in.Direction != MergeAuto }

func (in mergeIntent) kept() string {
	if in.Direction == MergeUp {
		return in.Child
	}
	return in.Parent
}

func (in mergeIntent) dropped() string {
	if in.Direction == MergeUp {
		return in.Parent
	}
	return in.Child
}

func (m *Manager) mergesDir() string { return filepath.Join(m.root, "meta", "merges") }

func (m *Manager) intentPath(child string) string {
	return filepath.Join(m.mergesDir(), strings.TrimSuffix(child, deltaSuffix)+".json")
}

// Errors that put a pair off until a later pass.
var (
	errMergeBusy  = errors.New("a volume or snapshot of the pair is busy")
	errMergeStale = errors.New("the chains changed since the plan")
)

// forest reads every chain: committed volumes' descriptors and snapshot
// records. An unreadable descriptor of a committed volume fails it: that
// chain might hold any delta.
func (m *Manager) forest(ctx context.Context) ([]chainRef, error) {
	m.mu.Lock()
	volIDs := make([]string, 0, len(m.vols))
	for id := range m.vols {
		volIDs = append(volIDs, id)
	}
	var chains []chainRef
	for id, s := range m.snaps {
		chains = append(chains, chainRef{snapshotID: id, deltas: m.poolPaths(s.Chain)})
	}
	m.mu.Unlock()
	slices.Sort(volIDs)
	for _, id := range volIDs {
		files, err := m.store.ChainFiles(ctx, m.volDir(id))
		if err != nil {
			if !m.committed(id) {
				continue // deleted since we listed it
			}
			return nil, fmt.Errorf("chain of volume %s: %w", id, err)
		}
		clean := make([]string, len(files))
		for i, f := range files {
			clean[i] = filepath.Clean(f)
		}
		chains = append(chains, chainRef{volumeID: id, deltas: clean})
	}
	return chains, nil
}

func (m *Manager) inPool(p string) bool {
	return filepath.Dir(p) == m.deltasDir() && deltaNamePattern.MatchString(filepath.Base(p))
}

// mergePass finishes interrupted merges, then merges pairs until none is
// left that can be done now. It reports whether work was put off.
func (m *Manager) mergePass(ctx context.Context) (deferred bool) {
	log := klog.FromContext(ctx)
	if err := m.finishIntents(ctx); err != nil {
		log.Error(err, "Finishing interrupted merges; retrying later")
		deferred = true
	}
	tried := map[string]bool{}
	for ctx.Err() == nil {
		chains, err := m.forest(ctx)
		if err != nil {
			log.Error(err, "Merge pass stopped; retrying later")
			return true
		}
		pair, ok, waiting := nextPair(planMerges(chains, m.inPool), tried)
		m.stats.setPending(waiting)
		if !ok {
			return deferred
		}
		tried[pair.parent+"\x00"+pair.child] = true
		if err := m.mergePair(ctx, pair); err != nil {
			deferred = true
			if !putOff(err) && ctx.Err() == nil {
				m.stats.failed()
				log.Error(err, "Merge failed; retrying later", "volumeID", pair.volumeID,
					"parent", filepath.Base(pair.parent), "child", filepath.Base(pair.child))
			} else {
				m.stats.deferred()
				log.V(2).Info("Merge put off", "volumeID", pair.volumeID, "child", filepath.Base(pair.child), "why", err)
			}
		}
	}
	return true
}

// putOff reports whether a merge that failed with err waits for a later
// pass rather than counting as failed: a key was busy, the chains changed,
// the volume was busy, or its serving process predates merges (it merges
// once the volume is attached anew).
func putOff(err error) bool {
	return errors.Is(err, errMergeBusy) || errors.Is(err, errMergeStale) || errors.Is(err, ErrBusy) ||
		errors.Is(err, errors.ErrUnsupported)
}

// nextPair picks the first pair not tried in this pass and not shared;
// waiting counts the mergeable pairs besides it.
func nextPair(pairs []mergePair, tried map[string]bool) (mergePair, bool, int) {
	var pick mergePair
	found := false
	waiting := 0
	for _, p := range pairs {
		if !found && !p.shared && !tried[p.parent+"\x00"+p.child] {
			pick, found = p, true
			continue
		}
		waiting++
	}
	return pick, found, waiting
}

// tryKeys takes every key or none.
func (m *Manager) tryKeys(keys []string) (func(), bool) {
	for i, k := range keys {
		if !m.keys.TryLock(k) {
			for _, held := range keys[:i] {
				m.keys.Unlock(held)
			}
			return nil, false
		}
	}
	return func() {
		for _, k := range keys {
			m.keys.Unlock(k)
		}
	}, true
}

// mergePair merges one pair under its keys.
func (m *Manager) mergePair(ctx context.Context, pair mergePair) error {
	unlock, ok := m.tryKeys(pair.keys())
	if !ok {
		return errMergeBusy
	}
	defer unlock()
	// Plan again under the keys: a restore or clone may have been committed
	// since, and no other pass runs meanwhile.
	chains, err := m.forest(ctx)
	if err != nil {
		return err
	}
	now := pairIn(chains, pair.parent, pair.child)
	if now.shared || now.volumeID != pair.volumeID || !slices.Equal(now.snapshots, pair.snapshots) ||
		!slices.ContainsFunc(planMerges(chains, m.inPool), func(p mergePair) bool { return p.child == pair.child }) {
		return errMergeStale
	}
	in := mergeIntent{Parent: filepath.Base(pair.parent), Child: filepath.Base(pair.child),
		VolumeID: pair.volumeID, StartedAt: m.now().UTC()}
	if err := writeJSONAtomic(m.intentPath(in.Child), in); err != nil {
		return err
	}
	m.crashPoint("merge.intent")
	res, online, err := m.copyPair(ctx, pair)
	if err != nil {
		// The intent stays: the next pass sees whether the switch happened.
		return fmt.Errorf("merge %s into %s: %w", filepath.Base(pair.child), filepath.Base(pair.parent), err)
	}
	m.crashPoint("merge.copied")
	in.Direction = res.Direction
	if err := writeJSONAtomic(m.intentPath(in.Child), in); err != nil {
		return err
	}
	m.crashPoint("merge.copy-recorded")
	if err := m.finishIntent(ctx, in, pair.snapshots); err != nil {
		return err
	}
	m.stats.merged(res, online)
	klog.FromContext(ctx).Info("Merged deltas", "volumeID", pair.volumeID, "snapshots", pair.snapshots,
		"kept", filepath.Base(res.Kept), "dropped", filepath.Base(res.Dropped), "direction", res.Direction,
		"online", online, "bytesCopied", res.BytesCopied, "duration", res.Duration, "pause", res.Pause)
	return nil
}

// copyPair has the data merged: by the volume's serving process when it
// is attached, by the store otherwise. For a volume the volume's descriptor
// is switched too.
func (m *Manager) copyPair(ctx context.Context, pair mergePair) (MergeResult, bool, error) {
	req := MergeRequest{Parent: pair.parent, Child: pair.child, Direction: MergeAuto}
	if pair.volumeID == "" {
		res, err := m.store.MergeDeltas(ctx, req)
		return res, false, err
	}
	dir := m.volDir(pair.volumeID)
	_, attached, err := m.attacher.Attached(ctx, dir)
	if err != nil {
		return MergeResult{}, false, fmt.Errorf("volume %s: attach state: %w", pair.volumeID, err)
	}
	if attached {
		res, err := m.attacher.Merge(ctx, dir, req)
		return res, true, err
	}
	res, err := m.store.MergeDir(ctx, dir, req)
	return res, false, err
}

// finishIntent rewrites the snapshot records that still hold both deltas of
// a merged pair, removes the intent and collects the dropped delta.
// snapshots are the records to look at; their keys are held.
func (m *Manager) finishIntent(ctx context.Context, in mergeIntent, snapshots []string) error {
	kept, dropped := m.deltaPath(in.kept()), m.deltaPath(in.dropped())
	for _, id := range snapshots {
		if err := m.rewriteRecord(id, kept, dropped); err != nil {
			return err
		}
		m.crashPoint("merge.record-rewritten")
	}
	if err := removeDurable(m.intentPath(in.Child)); err != nil {
		return err
	}
	m.crashPoint("merge.done")
	return m.collect(ctx, []string{dropped})
}

// rewriteRecord drops dropped from snapshot id's chain where it lies next
// to kept. The caller holds the snapshot's key.
func (m *Manager) rewriteRecord(id, kept, dropped string) error {
	m.mu.Lock()
	rec, ok := m.snaps[id]
	m.mu.Unlock()
	if !ok {
		return nil // deleted meanwhile
	}
	chain, changed := withoutDelta(m.poolPaths(rec.Chain), kept, dropped)
	if !changed {
		return nil
	}
	names, err := m.poolNames(chain)
	if err != nil {
		return err
	}
	next := *rec
	next.Chain = names
	if err := writeJSONAtomic(m.snapMetaPath(id), &next); err != nil {
		return err
	}
	m.mu.Lock()
	if m.snaps[id] == rec {
		m.snaps[id] = &next
	}
	m.mu.Unlock()
	return nil
}

// finishIntents finishes the merges a crash or a failure interrupted. An
// intent whose copy is recorded as done gets its snapshot records
// rewritten. One without: if its volume's chain already lost one of the
// two deltas, the serving process or the store switched it (so the copy
// was complete) and that tells the direction; otherwise nothing was
// rewritten yet and the intent is dropped (the pair is planned again).
func (m *Manager) finishIntents(ctx context.Context) error {
	ids, err := listRecords(m.mergesDir(), func(name string) bool { return deltaNamePattern.MatchString(name + deltaSuffix) })
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		in := mergeIntent{}
		if err := readJSON(filepath.Join(m.mergesDir(), id+".json"), &in); err != nil {
			errs = append(errs, err)
			continue
		}
		if !deltaNamePattern.MatchString(in.Parent) || !deltaNamePattern.MatchString(in.Child) {
			errs = append(errs, fmt.Errorf("merge intent %s names %q and %q, not pool deltas", id, in.Parent, in.Child))
			continue
		}
		if err := m.finishInterrupted(ctx, in); err != nil {
			errs = append(errs, fmt.Errorf("merge of %s and %s: %w", in.Parent, in.Child, err))
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) finishInterrupted(ctx context.Context, in mergeIntent) error {
	chains, err := m.forest(ctx)
	if err != nil {
		return err
	}
	parent, child := m.deltaPath(in.Parent), m.deltaPath(in.Child)
	if !in.copied() {
		in.Direction = switchedDirection(chains, in.VolumeID, parent, child)
		if !in.copied() {
			return removeDurable(m.intentPath(in.Child))
		}
	}
	pair := pairIn(chains, parent, child)
	unlock, ok := m.tryKeys(pair.keys())
	if !ok {
		return errMergeBusy
	}
	defer unlock()
	if chains, err = m.forest(ctx); err != nil { // again, under the keys
		return err
	}
	if now := pairIn(chains, parent, child); !slices.Equal(now.snapshots, pair.snapshots) {
		return errMergeStale
	}
	klog.FromContext(ctx).Info("Finishing an interrupted merge", "volumeID", in.VolumeID,
		"kept", in.kept(), "dropped", in.dropped(), "snapshots", pair.snapshots)
	return m.finishIntent(ctx, in, pair.snapshots)
}

// switchedDirection tells from the volume's chain whether a merge of parent
// and child was switched (MergeDown: the child is gone from it, MergeUp:
// the parent is), or MergeAuto when it holds both, or the volume is gone.
func switchedDirection(chains []chainRef, volumeID, parent, child string) MergeDirection {
	if volumeID == "" {
		return MergeAuto
	}
	for _, c := range chains {
		if c.volumeID != volumeID {
			continue
		}
		hasP, hasC := slices.Contains(c.deltas, parent), slices.Contains(c.deltas, child)
		switch {
		case hasP && !hasC:
			return MergeDown
		case hasC && !hasP:
			return MergeUp
		}
	}
	return MergeAuto
}
