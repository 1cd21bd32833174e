package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestConcurrentOperations: 16 workers send about 1000 mixed CSI requests
// over 24 volume slots to the real driver (create, restore, clone, stage,
// publish, write and verify, snapshot, expand, stats, unpublish, unstage,
// delete, snapshot delete), with deliberate overlaps: the same request twice
// at once (a retry overlapping its first attempt), snapshots and lookups of
// volumes another worker is using, restores of snapshots being deleted. A
// helper process attaches and detaches unrelated loop devices all along.
// Every answer must be OK or a defined code (Aborted for in-flight
// conflicts, retried until done), never Internal; every volume holds what
// was fsynced into it, its snapshots and clones what it held then; at the
// end nothing is left: files, loop devices, mounts, FUSE connections or
// serving processes.
func TestConcurrentOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	h := newHarness(t)
	startLoopChurn(t)
	w := &world{t: t, h: h, total: 1000, codes: map[string]map[codes.Code]int{}}
	for range 24 {
		s := &slot{}
		s.set(nil, 0, content{})
		w.slots = append(w.slots, s)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() { defer wg.Done(); w.worker(uint64(i)) }()
	}
	wg.Wait()
	t.Logf("%d requests in %v", w.ops.Load(), time.Since(start).Round(time.Millisecond))
	w.verifyAll()
	w.teardown()
	t.Logf("answers: %s", w.summary())
	h.checkNoLeaks()
}

func (w *world) worker(seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	for w.ops.Load() < w.total && !w.t.Failed() {
		s := w.slots[r.IntN(len(w.slots))]
		if !s.mu.TryLock() {
			if r.IntN(3) == 0 {
				w.overlap(r, s)
			}
			continue
		}
		w.step(r, s)
		s.mu.Unlock()
	}
}

// overlap sends a request about a volume another worker is using.
func (w *world) overlap(r *rand.Rand, s *slot) {
	id := *s.id.Load()
	if id == "" {
		return
	}
	if r.IntN(2) == 0 {
		w.ops.Add(-1) // a lookup: not counted among the operations
		w.call("ControllerGetVolume (overlap)", []codes.Code{codes.NotFound}, func(ctx context.Context) error {
			_, err := w.h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
			return err
		})
		return
	}
	name := w.name("overlap-snap")
	var snapID string
	code := w.call("CreateSnapshot (overlap)", []codes.Code{codes.Aborted, codes.NotFound}, func(ctx context.Context) error {
		resp, err := w.h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: id, Name: name})
		snapID = resp.GetSnapshot().GetSnapshotId()
		return err
	})
	if code == codes.OK {
		w.addSnap(&snapRec{id: snapID})
	}
}

// step does one thing with the slot s the worker owns.
func (w *world) step(r *rand.Rand, s *slot) {
	n := r.IntN(100)
	switch {
	case n < 4:
		w.deleteSnapshot(r)
	case s.v == nil:
		w.create(r, s)
	case !s.staged:
		switch {
		case n < 60:
			w.stage(r, s)
		case n < 72:
			w.snapshot(r, s)
		case n < 82:
			w.expand(r, s)
		default:
			w.delete(r, s)
		}
	case !s.published:
		switch {
		case n < 65:
			w.publish(r, s)
		case n < 80:
			w.unstage(r, s)
		case n < 90:
			w.expand(r, s)
		default:
			w.snapshot(r, s)
		}
	default:
		switch {
		case n < 45:
			w.write(r, s)
		case n < 60:
			w.snapshot(r, s)
		case n < 70:
			w.expand(r, s)
		case n < 75:
			w.stats(s)
		default:
			w.unpublish(r, s)
		}
	}
}

// until retries a request while it answers Aborted (another request on the
// same volume is in flight), as kubelet and the sidecars do.
func (w *world) until(r *rand.Rand, op string, allowed []codes.Code, rpc func(ctx context.Context) error) codes.Code {
	for attempt := 0; ; attempt++ {
		var code codes.Code
		if r.IntN(5) == 0 {
			code = codes.Aborted
			if w.twice(op, append([]codes.Code{codes.Aborted}, allowed...), rpc) {
				code = codes.OK
			}
		} else {
			code = w.call(op, append([]codes.Code{codes.Aborted}, allowed...), rpc)
		}
		if code != codes.Aborted || attempt == 200 {
			if code == codes.Aborted {
				w.t.Errorf("%s: still Aborted after %d attempts", op, attempt)
			}
			return code
		}
		time.Sleep(time.Duration(5+r.IntN(20)) * time.Millisecond)
	}
}

// volume kinds: ext4 and xfs filesystems (xfs needs 300 MB), raw block.
func (w *world) newKind(r *rand.Rand) (*csi.VolumeCapability, int64) {
	switch r.IntN(4) {
	case 0:
		return mountCap("xfs"), 320 * mi
	case 1:
		return blockCap(), 32 * mi
	default:
		return mountCap("ext4"), 64 * mi
	}
}

func (w *world) newVol(name string, c *csi.VolumeCapability) *vol {
	return &vol{cap: c, staging: filepath.Join(w.h.tmp, "staging", name),
		target: filepath.Join(w.h.tmp, "pods", name, "target")}
}

// create makes a new volume in the empty slot s: empty, restored from a
// snapshot (sometimes larger than it) or cloned from a volume nobody uses.
func (w *world) create(r *rand.Rand, s *slot) {
	name := w.name("vol")
	req := &csi.CreateVolumeRequest{Name: name}
	var c *csi.VolumeCapability
	var size int64
	var data content
	allowed := []codes.Code{}
	switch k := r.IntN(4); {
	case k == 2 && w.pickSnap(r) != nil:
		snap := w.pickSnap(r)
		c, size, data = snap.cap, snap.capacity+int64(r.IntN(2))*32*mi, snap.data.clone()
		req.VolumeContentSource = fromSnapshot(snap.id)
		allowed = []codes.Code{codes.NotFound} // deleted meanwhile
	case k == 3:
		src := w.slots[r.IntN(len(w.slots))]
		if src == s || !src.mu.TryLock() {
			return
		}
		defer src.mu.Unlock()
		if src.v == nil {
			return
		}
		c, size, data = src.v.cap, src.capacity+int64(r.IntN(2))*32*mi, src.data.clone()
		req.VolumeContentSource = fromVolume(src.v.id)
	default:
		c, size = w.newKind(r)
		data = content{files: map[string][32]byte{}, blocks: map[int64][]byte{}}
	}
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: size}
	req.VolumeCapabilities = []*csi.VolumeCapability{c}
	if fs := c.GetMount().GetFsType(); fs != "" {
		req.Parameters = map[string]string{"csi.storage.k8s.io/fstype": fs}
	}
	v := w.newVol(name, c)
	code := w.until(r, "CreateVolume", allowed, func(ctx context.Context) error {
		resp, err := w.h.ctrl.CreateVolume(ctx, req)
		if err == nil {
			v.id = resp.GetVolume().GetVolumeId()
		}
		return err
	})
	if code == codes.OK {
		s.set(v, size, data)
	}
}

func (w *world) stage(r *rand.Rand, s *slot) {
	req := &csi.NodeStageVolumeRequest{VolumeId: s.v.id, StagingTargetPath: s.v.staging, VolumeCapability: s.v.cap}
	if w.until(r, "NodeStageVolume", nil, func(ctx context.Context) error {
		_, err := w.h.node.NodeStageVolume(ctx, req)
		return err
	}) == codes.OK {
		s.staged = true
		w.h.noteFuseConns()
	}
}

func (w *world) publish(r *rand.Rand, s *slot) {
	req := &csi.NodePublishVolumeRequest{VolumeId: s.v.id, StagingTargetPath: s.v.staging,
		TargetPath: s.v.target, VolumeCapability: s.v.cap}
	if w.until(r, "NodePublishVolume", nil, func(ctx context.Context) error {
		_, err := w.h.node.NodePublishVolume(ctx, req)
		return err
	}) != codes.OK {
		return
	}
	s.published = true
	if err := s.verify(); err != nil {
		w.t.Errorf("volume %s after publish: %v", s.v.id, err)
	}
}

// write adds a fsynced file (or block) and verifies everything the volume
// should hold.
func (w *world) write(r *rand.Rand, s *slot) {
	data := randomBytes(64 << 10)
	if s.v.block() {
		off := int64(r.IntN(int(s.capacity/(64<<10)))) * (64 << 10)
		if err := writeBlockSynced(s.v.target, off, data); err != nil {
			w.t.Errorf("write volume %s at %d: %v", s.v.id, off, err)
			return
		}
		s.data.blocks[off] = data
	} else {
		name := w.name("f")
		if err := writeFileSynced(s.v.target, name, data); err != nil {
			w.t.Errorf("write volume %s: %v", s.v.id, err)
			return
		}
		s.data.files[name] = sha256.Sum256(data)
	}
	if err := s.verify(); err != nil {
		w.t.Errorf("volume %s: %v", s.v.id, err)
	}
}

func (w *world) snapshot(r *rand.Rand, s *slot) {
	name := w.name("snap")
	var id string
	if w.until(r, "CreateSnapshot", nil, func(ctx context.Context) error {
		resp, err := w.h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: s.v.id, Name: name})
		if err == nil {
			id = resp.GetSnapshot().GetSnapshotId()
		}
		return err
	}) == codes.OK {
		data := s.data.clone()
		w.addSnap(&snapRec{id: id, cap: s.v.cap, capacity: s.capacity, data: &data})
	}
}

// expand grows the volume: the controller, then, when staged, the node. A
// mounted ext4 cannot grow here (no CAP_SYS_RESOURCE): FailedPrecondition,
// and it grows at its next stage.
func (w *world) expand(r *rand.Rand, s *slot) {
	size := s.capacity + 16*mi
	cr := &csi.CapacityRange{RequiredBytes: size}
	if w.until(r, "ControllerExpandVolume", nil, func(ctx context.Context) error {
		_, err := w.h.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
			VolumeId: s.v.id, CapacityRange: cr, VolumeCapability: s.v.cap})
		return err
	}) != codes.OK {
		return
	}
	s.capacity = size
	path := s.v.staging
	switch {
	case s.published:
		path = s.v.target
	case !s.staged || s.v.block():
		return // kubelet expands on the node once it is published
	}
	var allowed []codes.Code
	if s.fs() == "ext4" && s.published {
		allowed = []codes.Code{codes.FailedPrecondition}
	}
	w.until(r, "NodeExpandVolume", allowed, func(ctx context.Context) error {
		_, err := w.h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: s.v.id, VolumePath: path,
			StagingTargetPath: s.v.staging, CapacityRange: cr})
		return err
	})
}

func (w *world) stats(s *slot) {
	w.call("NodeGetVolumeStats", nil, func(ctx context.Context) error {
		resp, err := w.h.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: s.v.id, VolumePath: s.v.target})
		if err == nil && (len(resp.GetUsage()) == 0 || resp.GetUsage()[0].GetTotal() <= 0) {
			w.t.Errorf("NodeGetVolumeStats %s: %v", s.v.id, resp)
		}
		return err
	})
}

func (w *world) unpublish(r *rand.Rand, s *slot) {
	if w.until(r, "NodeUnpublishVolume", nil, func(ctx context.Context) error {
		_, err := w.h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: s.v.id, TargetPath: s.v.target})
		return err
	}) == codes.OK {
		s.published = false
	}
}

func (w *world) unstage(r *rand.Rand, s *slot) {
	if w.until(r, "NodeUnstageVolume", nil, func(ctx context.Context) error {
		_, err := w.h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: s.v.id, StagingTargetPath: s.v.staging})
		return err
	}) == codes.OK {
		s.staged = false
	}
}

func (w *world) delete(r *rand.Rand, s *slot) {
	if w.until(r, "DeleteVolume", nil, func(ctx context.Context) error {
		_, err := w.h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: s.v.id})
		return err
	}) == codes.OK {
		s.set(nil, 0, content{})
	}
}

func (w *world) deleteSnapshot(r *rand.Rand) {
	snap := w.takeSnap(r)
	if snap == nil {
		return
	}
	if w.until(r, "DeleteSnapshot", nil, func(ctx context.Context) error {
		_, err := w.h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.id})
		return err
	}) != codes.OK {
		w.addSnap(snap)
	}
}

// verifyAll checks every published volume once more after the workers stop.
func (w *world) verifyAll() {
	for _, s := range w.slots {
		if s.v != nil && s.published {
			if err := s.verify(); err != nil {
				w.t.Errorf("volume %s at the end: %v", s.v.id, err)
			}
		}
	}
}

// teardown removes everything the workers left, as the CO would.
func (w *world) teardown() {
	r := rand.New(rand.NewPCG(1, 2))
	for _, s := range w.slots {
		if s.v == nil {
			continue
		}
		if s.published {
			w.unpublish(r, s)
		}
		if s.staged {
			w.unstage(r, s)
		}
		w.delete(r, s)
	}
	for {
		w.mu.Lock()
		left := len(w.snaps)
		w.mu.Unlock()
		if left == 0 || w.t.Failed() {
			return
		}
		w.deleteSnapshot(r)
	}
}

func (w *world) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var lines []string
	for op, byCode := range w.codes {
		var parts []string
		for c, n := range byCode {
			parts = append(parts, fmt.Sprintf("%v=%d", c, n))
		}
		slices.Sort(parts)
		lines = append(lines, op+" "+strings.Join(parts, " "))
	}
	slices.Sort(lines)
	return "\n" + strings.Join(lines, "\n")
}
