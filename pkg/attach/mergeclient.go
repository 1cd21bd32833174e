package attach

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// ErrMerging: a merge runs on the image: a second merge, a snapshot or a
// grow waits until it has ended (try again).
var ErrMerging = errors.New("attach: a merge is running on the image")

// MergeRequest names two adjacent deltas of an attached image's chain:
// Child lies right above Parent. Both are absolute paths as the chain knows
// them (image.Chain.Deltas, the descriptor's files resolved).
type MergeRequest struct {
	Parent, Child string
	Direction     image.MergeDirection // MergeAuto: the one that copies less
	// Progress, if set, is called while the merge runs (Client.Merge
	// polls the server's status for it).
	Progress image.MergeProgress `json:"-"`
}

// MergeResult is what a merge did (image.MergeStats over the socket).
type MergeResult struct {
	Direction image.MergeDirection `json:"direction"`
	// Kept holds the combined view; Dropped left the chain. Dropped's file
	// is not removed: the caller removes it once nothing references it.
	Kept        string        `json:"kept"`
	Dropped     string        `json:"dropped"`
	BytesCopied int64         `json:"bytesCopied"`
	Duration    time.Duration `json:"duration"` // nanoseconds on the wire
	// Pause is how long I/O waited at the switch.
	Pause time.Duration `json:"pause"`
}

func resultOf(st image.MergeStats) MergeResult {
	return MergeResult{Direction: st.Direction, Kept: st.Kept, Dropped: st.Dropped,
		BytesCopied: st.BytesCopied, Duration: st.Duration, Pause: st.Pause}
}

// MergeStatus is the merge a server is running (Status.Merge).
type MergeStatus struct {
	Parent    string               `json:"parent"`
	Child     string               `json:"child"`
	Direction image.MergeDirection `json:"direction,omitempty"` // as requested
	// Done of Total bytes copied so far (Total is 0 until the plan is made).
	Done    int64     `json:"done"`
	Total   int64     `json:"total"`
	Started time.Time `json:"started"`
}

// mergePollEvery is how often Client.Merge asks for progress.
const mergePollEvery = 250 * time.Millisecond

// Merge has the serving process of dir merge two adjacent deltas of its
// chain while I/O goes on, and waits for it (ctx bounds the wait; when it
// ends, the server cancels the merge, which then changed nothing). A
// server that predates merges answers errors.ErrUnsupported; one that is
// merging already, ErrMerging; a merge cancelled by a hand-over or a
// detach, ErrNotAttached (run it again: on the successor, or offline).
func (c *Client) Merge(ctx context.Context, dir string, req MergeRequest) (MergeResult, error) {
	_, rt, err := c.paths(dir)
	if err != nil {
		return MergeResult{}, err
	}
	st, err := c.Status(ctx, dir)
	if err != nil {
		return MergeResult{}, err
	}
	if st.Protocol < 3 {
		return MergeResult{}, fmt.Errorf("attach: the serving process of %s speaks control protocol %d, online merges need 3 (it merges once attached anew): %w",
			dir, st.Protocol, errors.ErrUnsupported)
	}
	if req.Progress != nil {
		stop := c.pollMerge(ctx, dir, req)
		defer stop()
	}
	resp, err := call(ctx, rt, request{Op: opMerge, Parent: filepath.Clean(req.Parent),
		Child: filepath.Clean(req.Child), Direction: string(req.Direction)})
	if err != nil {
		return MergeResult{}, err
	}
	if resp.Merge == nil {
		return MergeResult{}, fmt.Errorf("attach: merge %s: the server's answer lacks the result", dir)
	}
	return *resp.Merge, nil
}

// pollMerge reports the progress of req's merge until stopped.
func (c *Client) pollMerge(ctx context.Context, dir string, req MergeRequest) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(mergePollEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			st, err := c.Status(ctx, dir)
			if m := st.Merge; err == nil && m != nil && m.Child == filepath.Clean(req.Child) && m.Total > 0 {
				req.Progress(m.Done, m.Total)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// MergeDir merges two adjacent deltas of image directory dir whether or
// not it is attached: offline with image.MergeDirPair or, when the image is
// busy, online through its serving process (runDir "" = DefaultRunDir).
// shared (nil: image.SharedOutside(dir)) is asked about both deltas first:
// a merge writes one and drops the other, so neither may be another
// chain's. The dropped file is left for the caller. online tells which
// way it ran. For "csi-ploop image merge".
func MergeDir(ctx context.Context, dir, runDir string, req MergeRequest, shared func(string) (bool, error)) (res MergeResult, online bool, err error) {
	abs, err := absDir(dir)
	if err != nil {
		return MergeResult{}, false, err
	}
	if shared == nil {
		shared = image.SharedOutside(abs)
	}
	for _, p := range []string{req.Parent, req.Child} {
		is, err := shared(filepath.Clean(p))
		if err != nil {
			return MergeResult{}, false, fmt.Errorf("is %s shared: %w", p, err)
		}
		if is {
			return MergeResult{}, false, fmt.Errorf("%w: %s would be changed or dropped by the merge, but another chain references it", image.ErrShared, p)
		}
	}
	// Offline, the merge may open the top for writing, whose recovery would
	// reclaim the clusters of writes a dead server acknowledged: replay its
	// journal first (a no-op when a live server holds the image).
	if err := ReplayJournal(runDir, abs, nil); err != nil {
		return MergeResult{}, false, err
	}
	st, err := image.MergeDirPair(ctx, abs, req.Parent, req.Child, image.PairMergeOptions{
		Direction: req.Direction, Progress: req.Progress, Shared: shared})
	if !errors.Is(err, image.ErrBusy) {
		return resultOf(st), false, err
	}
	res, rerr := NewClient(AttachOptions{RunDir: runDir}).Merge(ctx, abs, req)
	if errors.Is(rerr, ErrNotAttached) {
		return MergeResult{}, false, errors.Join(err, rerr) // locked by something else
	}
	return res, true, rerr
}
