package image

import (
	"fmt"
	"os"
	"strings"
)

// Severity of a problem found by Check.
type Severity string

const (
	SevError   Severity = "error"   // the image is corrupt
	SevWarning Severity = "warning" // consistent, but not clean (in-use mark, leaked space)
)

// Problem is one finding of Check.
type Problem struct {
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Repaired bool     `json:"repaired"`
}

// DeltaReport is what Check found in one delta file.
type DeltaReport struct {
	Path      string    `json:"path"`
	Version   int       `json:"version"`
	Size      int64     `json:"size"`
	Cluster   int64     `json:"clusterSize"`
	Clusters  int       `json:"allocatedClusters"`
	FileBytes int64     `json:"fileBytes"`
	Problems  []Problem `json:"problems"`
}

// Report is the result of Check over a delta or an image directory's chain.
type Report struct {
	Deltas   []DeltaReport `json:"deltas"`
	Problems []Problem     `json:"problems"` // descriptor-level problems
}

// OK reports whether no errors remain (warnings allowed).
func (r *Report) OK() bool {
	for _, p := range r.all() {
		if p.Severity == SevError && !p.Repaired {
			return false
		}
	}
	return true
}

// Clean reports whether nothing at all remains to be said.
func (r *Report) Clean() bool {
	for _, p := range r.all() {
		if !p.Repaired {
			return false
		}
	}
	return true
}

func (r *Report) all() []Problem {
	out := append([]Problem(nil), r.Problems...)
	for _, d := range r.Deltas {
		out = append(out, d.Problems...)
	}
	return out
}

// Check checks a delta file, or every delta of an image directory, and with
// repair fixes what it can: clears the in-use mark, drops BAT entries that
// point outside the data area or the file, gives clusters shared by two
// entries a copy each, and trims leaked space at the end of the file.
// Repair must not run while the image is open elsewhere.
func Check(path string, repair bool) (*Report, error) {
	return checkFS(NewOSFS(false), path, repair)
}

func checkFS(fsys FS, path string, repair bool) (*Report, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	r := &Report{}
	files := []string{path}
	if st.IsDir() && repair {
		// Repairing under a running server would corrupt what it serves.
		img := &Image{Dir: path, fs: fsys}
		if err := img.takeLock(); err != nil {
			return nil, err
		}
		defer img.unlock()
	}
	if st.IsDir() {
		desc, err := readDescriptor(fsys, path)
		if err != nil {
			return nil, err
		}
		if files, err = desc.ChainFiles(path); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		dr, err := checkDelta(fsys, f, repair)
		if err != nil {
			return nil, err
		}
		r.Deltas = append(r.Deltas, *dr)
	}
	return r, nil
}

// checkDelta checks one delta; a header that cannot be read is an error of
// the call (nothing else can be checked), everything else a Problem.
func checkDelta(fsys FS, path string, repair bool) (*DeltaReport, error) {
	f, err := fsys.Open(path, repair)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, HeaderSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("%s: %w: cannot read header: %w", path, ErrCorrupt, err)
	}
	h, err := DecodeHeader(buf, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if repair && h.Version == 1 {
		return nil, fmt.Errorf("%s: %w", path, ErrReadOnly)
	}
	d := &Delta{path: path, f: f, h: h}
	c := &deltaChecker{d: d, fileSize: size, repair: repair,
		r: &DeltaReport{Path: path, Version: h.Version, Size: h.Size(), Cluster: h.ClusterSize(), FileBytes: size}}
	if err := c.run(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c.r, nil
}

type deltaChecker struct {
	d        *Delta
	fileSize int64
	repair   bool
	r        *DeltaReport
	dirty    bool // something was repaired: sync before returning
}

func (c *deltaChecker) add(sev Severity, repaired bool, format string, args ...any) {
	c.r.Problems = append(c.r.Problems, Problem{Severity: sev, Message: fmt.Sprintf(format, args...), Repaired: repaired})
	c.dirty = c.dirty || repaired
}

func (c *deltaChecker) run() error {
	h := c.d.h
	cs := h.ClusterSize()
	used := newBitmap(c.fileSize/cs + 1)
	var shared []uint32
	end := h.DataStart()
	err := c.d.forEachEntry(func(vc, entry uint32) error {
		if perr := c.d.entryError(vc, entry, c.fileSize); perr != nil {
			return c.dropEntry(vc, perr)
		}
		off := h.clusterOffset(entry)
		if used.testAndSet(off / cs) {
			shared = append(shared, vc)
			return nil
		}
		end = max(end, off+cs)
		c.r.Clusters++
		return nil
	})
	if err != nil {
		return err
	}
	if err := c.unshare(shared, &end); err != nil {
		return err
	}
	if err := c.punchUnused(used, end); err != nil {
		return err
	}
	if err := c.trim(end); err != nil {
		return err
	}
	if h.InUse {
		if c.repair {
			if err := c.d.setInUse(false); err != nil {
				return err
			}
		}
		c.add(SevWarning, c.repair, "in-use mark set: the image was not closed cleanly")
	}
	if c.dirty {
		return c.d.sync()
	}
	return nil
}

func (c *deltaChecker) dropEntry(vc uint32, problem error) error {
	msg := strings.TrimPrefix(problem.Error(), ErrCorrupt.Error()+": ")
	if c.repair {
		if err := c.d.setEntry(vc, 0); err != nil {
			return err
		}
		msg += " (entry cleared: that cluster now reads from below)"
	}
	c.add(SevError, c.repair, "%s", msg)
	return nil
}

// unshare gives every entry that pointed at an already used cluster a copy.
func (c *deltaChecker) unshare(shared []uint32, end *int64) error {
	if len(shared) == 0 {
		return nil
	}
	if !c.repair {
		c.add(SevError, false, "%d BAT entries point at clusters other entries use (first: entry %d)", len(shared), shared[0])
		return nil
	}
	c.d.next = *end
	buf := make([]byte, c.d.h.ClusterSize())
	for _, vc := range shared {
		entry, err := c.entry(vc)
		if err != nil {
			return err
		}
		if _, err := c.d.f.ReadAt(buf, c.d.h.clusterOffset(entry)); err != nil {
			return err
		}
		if err := c.d.putNewCluster(vc, buf); err != nil {
			return err
		}
		*end = c.d.next
	}
	c.add(SevError, true, "%d BAT entries pointed at clusters other entries use (each got a copy)", len(shared))
	return nil
}

func (c *deltaChecker) entry(vc uint32) (uint32, error) {
	var b [4]byte
	if _, err := c.d.f.ReadAt(b[:], HeaderSize+4*int64(vc)); err != nil {
		return 0, err
	}
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24, nil
}

// punchUnused reports clusters before end that no BAT entry uses but that
// hold data, and with repair punches every unused cluster (the ones that
// hold only reserved space too, which SEEK_DATA cannot tell from holes):
// allocations whose entries a crash kept from the BAT (group commit writes
// them at the next flush). Punched, they cost no space, and the next writer
// reuses them (Delta.findFree).
func (c *deltaChecker) punchUnused(used bitmap, end int64) error {
	h := c.d.h
	if h.Version != 2 {
		return nil // v1 clusters need not be aligned; v1 is read-only anyway
	}
	cs := h.ClusterSize()
	leaked := 0
	err := used.unsetRuns((h.DataStart()+cs-1)/cs, end/cs, func(lo, hi int64) error {
		holes, err := holeClusters(c.d.f, lo*cs, hi*cs, cs)
		if err != nil {
			return err
		}
		leaked += int(hi-lo) - len(holes)
		if c.repair {
			if err := c.d.f.Punch(lo*cs, (hi-lo)*cs); err != nil {
				return fmt.Errorf("punch unused clusters: %w", err)
			}
			c.dirty = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if leaked > 0 {
		c.add(SevWarning, c.repair, "%d clusters inside the file hold data but no BAT entry points at them (leaked; punched when repaired)", leaked)
	}
	return nil
}

// trim reports (and with repair cuts) file space past the last used cluster:
// what a crash between extending the file and writing the BAT entry leaves.
func (c *deltaChecker) trim(end int64) error {
	size, err := c.d.f.Size()
	if err != nil {
		return err
	}
	if size <= end {
		return nil
	}
	if c.repair {
		if err := c.d.f.Truncate(end); err != nil {
			return err
		}
	}
	c.add(SevWarning, c.repair, "%d bytes past the last allocated cluster are unused (leaked)", size-end)
	return nil
}

// putNewCluster writes a whole cluster for vc into a new cluster, synced
// before its BAT entry.
func (d *Delta) putNewCluster(vc uint32, data []byte) error {
	off, entry, err := d.allocate()
	if err != nil {
		return err
	}
	if _, err := d.f.WriteAt(data, off); err != nil {
		return err
	}
	if err := d.sync(); err != nil {
		return err
	}
	return d.setEntry(vc, entry)
}
