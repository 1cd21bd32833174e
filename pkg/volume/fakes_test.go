package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// fakeDescriptor is what the fake store keeps in DiskDescriptor.xml (as JSON): the
// only thing the manager relies on is the chain of absolute delta paths.
type fakeDescriptor struct {
	Size        int64    `json:"size"`
	ClusterSize int64    `json:"clusterSize"`
	Chain       []string `json:"chain"`
}

const descName = "DiskDescriptor.xml"

// fakeStore implements ImageStore with real small files so GC is tested on disk.
// step, when set, is called at internal steps and may panic to simulate a crash.
type fakeStore struct {
	mu    sync.Mutex
	step  func(name string)
	fail  map[string]error // method name -> error to return
	calls []string
	seq   int
}

func newFakeStore() *fakeStore { return &fakeStore{fail: map[string]error{}} }

func (f *fakeStore) enter(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method)
	return f.fail[method]
}

func (f *fakeStore) at(name string) {
	if f.step != nil {
		f.step(name)
	}
}

func (f *fakeStore) newDelta(path string) error {
	f.mu.Lock()
	f.seq++
	d := &fakeDelta{ID: f.seq, Data: map[int]string{}}
	f.mu.Unlock()
	return saveFakeDelta(path, d)
}

func writeDesc(dir string, d *fakeDescriptor) error {
	data, _ := json.Marshal(d)
	tmp := filepath.Join(dir, descName+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, descName))
}

func readDesc(dir string) (*fakeDescriptor, error) {
	data, err := os.ReadFile(filepath.Join(dir, descName))
	if err != nil {
		return nil, err
	}
	d := &fakeDescriptor{}
	return d, json.Unmarshal(data, d)
}

func (f *fakeStore) Create(ctx context.Context, dir string, size int64, opts CreateOptions) error {
	return f.CreateOnChain(ctx, dir, nil, size, opts)
}

func (f *fakeStore) CreateOnChain(_ context.Context, dir string, base []string, size int64, opts CreateOptions) error {
	if err := f.enter("Create"); err != nil {
		return err
	}
	for _, b := range base {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("base delta: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f.at("create.dir")
	if err := f.newDelta(opts.DeltaFile); err != nil {
		return err
	}
	f.at("create.delta")
	chain := append(append([]string{}, base...), opts.DeltaFile)
	if err := writeDesc(dir, &fakeDescriptor{Size: size, ClusterSize: opts.ClusterSize, Chain: chain}); err != nil {
		return err
	}
	f.at("create.descriptor")
	return nil
}

func (f *fakeStore) SnapshotDir(_ context.Context, dir string, opts SnapshotOptions) (string, error) {
	if err := f.enter("SnapshotDir"); err != nil {
		return "", err
	}
	return f.snapshot(dir, opts.NewDeltaFile)
}

func (f *fakeStore) snapshot(dir, newTop string) (string, error) {
	d, err := readDesc(dir)
	if err != nil {
		return "", err
	}
	if err := f.newDelta(newTop); err != nil {
		return "", err
	}
	f.at("snapshot.delta")
	d.Chain = append(d.Chain, newTop)
	if err := writeDesc(dir, d); err != nil {
		return "", err
	}
	f.at("snapshot.descriptor")
	return "{" + filepath.Base(newTop) + "}", nil
}

func (f *fakeStore) ChainFiles(_ context.Context, dir string) ([]string, error) {
	if err := f.enter("ChainFiles"); err != nil {
		return nil, err
	}
	d, err := readDesc(dir)
	if err != nil {
		return nil, err
	}
	return d.Chain, nil
}

func (f *fakeStore) GrowDir(_ context.Context, dir string, size int64) error {
	if err := f.enter("GrowDir"); err != nil {
		return err
	}
	d, err := readDesc(dir)
	if err != nil {
		return err
	}
	d.Size = max(d.Size, size)
	return writeDesc(dir, d)
}

func (f *fakeStore) AllocatedBytes(_ context.Context, path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (f *fakeStore) called(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == method {
			n++
		}
	}
	return n
}

// fakeAttacher pretends to serve image dirs; online snapshot/grow edit the same fake
// descriptor the store uses, as the serving process would.
type fakeAttacher struct {
	mu        sync.Mutex
	store     *fakeStore
	attached  map[string]string
	failures  map[string]string // dir -> why its data path failed
	detachErr error             // returned by Detach when set
	snapshots int
	grows     int
	merges    int
	next      int
}

func newFakeAttacher(s *fakeStore) *fakeAttacher {
	return &fakeAttacher{store: s, attached: map[string]string{}, failures: map[string]string{}}
}

func (a *fakeAttacher) Attach(_ context.Context, dir string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := readDesc(dir); err != nil {
		return "", err
	}
	if dev, ok := a.attached[dir]; ok {
		return dev, nil
	}
	dev := fmt.Sprintf("/dev/loop%d", a.next)
	a.next++
	a.attached[dir] = dev
	return dev, nil
}

func (a *fakeAttacher) Detach(_ context.Context, dir string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.detachErr != nil {
		return a.detachErr
	}
	delete(a.attached, dir)
	return nil
}

func (a *fakeAttacher) Health(_ context.Context, dir string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failures[dir], nil
}

func (a *fakeAttacher) Attached(_ context.Context, dir string) (string, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	dev, ok := a.attached[dir]
	return dev, ok, nil
}

func (a *fakeAttacher) Snapshot(_ context.Context, dir, newDelta string) (string, error) {
	a.mu.Lock()
	_, ok := a.attached[dir]
	a.snapshots++
	a.mu.Unlock()
	if !ok {
		return "", errors.New("fake attacher: not attached")
	}
	return a.store.snapshot(dir, newDelta)
}

func (a *fakeAttacher) Grow(ctx context.Context, dir string, size int64) error {
	a.mu.Lock()
	a.grows++
	a.mu.Unlock()
	return a.store.GrowDir(ctx, dir, size)
}

// fakeMounter records mounts in memory; targets must exist like with mount(2).
type fakeMounter struct {
	mu        sync.Mutex
	mounts    map[string]string   // target -> source
	options   map[string][]string // target -> options
	formatted map[string]string   // device -> fsType
	resized   []string
	// needResize marks devices whose filesystem is smaller than the device.
	needResize map[string]bool
	// resizeErr makes ResizeFs of a device fail (no CAP_SYS_RESOURCE...).
	resizeErr map[string]error
	// grownOffline lists the devices GrowUnmounted grew.
	grownOffline []string
	// offline marks devices whose filesystem can grow unmounted (ext4).
	offline map[string]bool
}

func newFakeMounter() *fakeMounter {
	return &fakeMounter{mounts: map[string]string{}, options: map[string][]string{}, formatted: map[string]string{},
		needResize: map[string]bool{}, resizeErr: map[string]error{}, offline: map[string]bool{}}
}

func (f *fakeMounter) FormatAndMount(ctx context.Context, source, target, fsType string, options []string) error {
	f.mu.Lock()
	if _, ok := f.formatted[source]; !ok {
		f.formatted[source] = fsType
	}
	f.mu.Unlock()
	return f.Mount(ctx, source, target, fsType, options)
}

func (f *fakeMounter) Mount(_ context.Context, source, target, _ string, options []string) error {
	if _, err := os.Stat(target); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts[target], f.options[target] = source, options
	return nil
}

func (f *fakeMounter) Unmount(_ context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounts, target)
	return nil
}

func (f *fakeMounter) IsMountPoint(_ context.Context, target string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.mounts[target]
	return ok, nil
}

// NeedResize: the fake's filesystems need growing when the test says so.
func (f *fakeMounter) NeedResize(_ context.Context, dev, _ string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.needResize[dev], nil
}

func (f *fakeMounter) ResizeFs(_ context.Context, dev, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.resizeErr[dev]; err != nil {
		return err
	}
	f.resized = append(f.resized, dev+"@"+path)
	f.needResize[dev] = false
	return nil
}

// MountedFrom: a bind mount of a mount of dev counts, like a shared superblock.
func (f *fakeMounter) MountedFrom(_ context.Context, path, dev string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for src, ok := f.mounts[path]; ok; src, ok = f.mounts[src] {
		if src == dev {
			return true, nil
		}
	}
	return false, nil
}

func (f *fakeMounter) GrowUnmounted(_ context.Context, dev string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, src := range f.mounts {
		if src == dev {
			return fmt.Errorf("fake: %s is mounted", dev)
		}
	}
	if f.offline[dev] && f.needResize[dev] {
		f.grownOffline = append(f.grownOffline, dev)
		f.needResize[dev] = false
	}
	return nil
}

func (f *fakeMounter) Stats(context.Context, string) (FsStats, error) {
	return FsStats{TotalBytes: 100, AvailableBytes: 60, UsedBytes: 40, TotalInodes: 10, FreeInodes: 7, UsedInodes: 3}, nil
}
