package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"
)

// fakeDelta is what a fake delta file holds: an id (so that no two files
// are alike) and its clusters, virtual cluster -> content. A chain's view
// is the clusters of its deltas laid over each other, bottom first.
type fakeDelta struct {
	ID   int            `json:"id"`
	Data map[int]string `json:"data"`
}

func loadFakeDelta(path string) (*fakeDelta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	d := &fakeDelta{}
	if err := json.Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("fake delta %s: %w", path, err)
	}
	if d.Data == nil {
		d.Data = map[int]string{}
	}
	return d, nil
}

func saveFakeDelta(path string, d *fakeDelta) error {
	b, _ := json.Marshal(d)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// fakeView is the content a chain of fake deltas shows.
func fakeView(chain []string) (map[int]string, error) {
	view := map[int]string{}
	for _, p := range chain {
		d, err := loadFakeDelta(p)
		if err != nil {
			return nil, err
		}
		maps.Copy(view, d.Data)
	}
	return view, nil
}

// write stores content at cluster vc of dir's image (in its top delta), as
// a write through the block device would.
func (f *fakeStore) write(dir string, vc int, content string) error {
	desc, err := readDesc(dir)
	if err != nil {
		return err
	}
	top := desc.Chain[len(desc.Chain)-1]
	d, err := loadFakeDelta(top)
	if err != nil {
		return err
	}
	d.Data[vc] = content
	return saveFakeDelta(top, d)
}

// mergeCost is what each direction copies.
func mergeCost(parent, child *fakeDelta) (down, up int) {
	for vc := range parent.Data {
		if _, ok := child.Data[vc]; !ok {
			up++
		}
	}
	return len(child.Data), up
}

// mergeFiles copies the data of a merge of parent and child (the fake
// image engine) and returns which file keeps the combined view.
func (f *fakeStore) mergeFiles(req MergeRequest) (MergeResult, error) {
	start := time.Now()
	p, err := loadFakeDelta(req.Parent)
	if err != nil {
		return MergeResult{}, err
	}
	c, err := loadFakeDelta(req.Child)
	if err != nil {
		return MergeResult{}, err
	}
	down, up := mergeCost(p, c)
	dir := req.Direction
	if dir == MergeAuto {
		dir = MergeUp
		if down <= up {
			dir = MergeDown
		}
	}
	res := MergeResult{Direction: dir, Kept: req.Parent, Dropped: req.Child}
	if dir == MergeDown {
		maps.Copy(p.Data, c.Data)
		err = saveFakeDelta(req.Parent, p)
		res.BytesCopied = int64(down)
	} else {
		for vc, v := range p.Data {
			if _, ok := c.Data[vc]; !ok {
				c.Data[vc] = v
			}
		}
		err = saveFakeDelta(req.Child, c)
		res.Kept, res.Dropped, res.BytesCopied = req.Child, req.Parent, int64(up)
	}
	res.Duration = time.Since(start)
	f.at("merge.data")
	return res, err
}

func (f *fakeStore) MergeDir(_ context.Context, dir string, req MergeRequest) (MergeResult, error) {
	if err := f.enter("MergeDir"); err != nil {
		return MergeResult{}, err
	}
	return f.mergeDir(dir, req)
}

func (f *fakeStore) mergeDir(dir string, req MergeRequest) (MergeResult, error) {
	d, err := readDesc(dir)
	if err != nil {
		return MergeResult{}, err
	}
	i := slices.Index(d.Chain, req.Parent)
	if i < 0 || i+1 >= len(d.Chain) || d.Chain[i+1] != req.Child {
		return MergeResult{}, fmt.Errorf("fake store: %s is not followed by %s in %v: %w", req.Parent, req.Child, d.Chain, ErrInvalid)
	}
	res, err := f.mergeFiles(req)
	if err != nil {
		return res, err
	}
	d.Chain = slices.DeleteFunc(d.Chain, func(p string) bool { return p == res.Dropped })
	if err := writeDesc(dir, d); err != nil {
		return res, err
	}
	f.at("merge.descriptor")
	return res, nil
}

func (f *fakeStore) MergeDeltas(_ context.Context, req MergeRequest) (MergeResult, error) {
	if err := f.enter("MergeDeltas"); err != nil {
		return MergeResult{}, err
	}
	return f.mergeFiles(req)
}

// Merge: the serving process merges on its open image, like the store.
func (a *fakeAttacher) Merge(_ context.Context, dir string, req MergeRequest) (MergeResult, error) {
	a.mu.Lock()
	_, ok := a.attached[dir]
	a.merges++
	a.mu.Unlock()
	if !ok {
		return MergeResult{}, errors.New("fake attacher: not attached")
	}
	res, err := a.store.mergeDir(dir, req)
	res.Pause = time.Millisecond
	return res, err
}
