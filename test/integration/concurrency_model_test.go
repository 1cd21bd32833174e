package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The model of TestConcurrentOperations: what each volume should hold.

// content is what a volume holds that the test wrote and fsynced: files of a
// filesystem volume (name -> sha256), blocks of a block volume (offset ->
// data).
type content struct {
	files  map[string][32]byte
	blocks map[int64][]byte
}

func (c content) clone() content {
	return content{files: maps.Clone(c.files), blocks: maps.Clone(c.blocks)}
}

// slot holds one volume of the model, or none. The worker holding mu owns
// it for one step; other workers may still send it overlapping requests.
type slot struct {
	mu        sync.Mutex
	v         *vol // nil: no volume
	capacity  int64
	staged    bool
	published bool
	data      content
	// id is v's ID for workers that do not hold mu ("" when empty).
	id atomic.Pointer[string]
}

func (s *slot) set(v *vol, capacity int64, data content) {
	s.v, s.capacity, s.data = v, capacity, data
	s.staged, s.published = false, false
	id := ""
	if v != nil {
		id = v.id
	}
	s.id.Store(&id)
}

func (s *slot) fs() string { return s.v.cap.GetMount().GetFsType() }

// snapRec is a snapshot of the model. data is nil for snapshots taken by an
// overlapping request (what they hold is not known, only that they exist).
type snapRec struct {
	id       string
	cap      *csi.VolumeCapability
	capacity int64
	data     *content
}

// world is the shared state of the workers.
type world struct {
	t     *testing.T
	h     *harness
	slots []*slot
	total int64

	mu    sync.Mutex // guards snaps and codes
	snaps []*snapRec
	codes map[string]map[codes.Code]int // op -> code -> count

	ops atomic.Int64
	seq atomic.Int64
}

func (w *world) name(prefix string) string { return fmt.Sprintf("%s-%d", prefix, w.seq.Add(1)) }

// call runs one RPC, counts it and reports an answer that is not OK or one
// of the codes allowed for it: Internal and Unknown are never allowed.
func (w *world) call(op string, allowed []codes.Code, rpc func(ctx context.Context) error) codes.Code {
	w.ops.Add(1)
	ctx, cancel := rpcCtx()
	defer cancel()
	err := rpc(ctx)
	code := status.Code(err)
	w.mu.Lock()
	if w.codes[op] == nil {
		w.codes[op] = map[codes.Code]int{}
	}
	w.codes[op][code]++
	w.mu.Unlock()
	if code != codes.OK && !contains(allowed, code) {
		w.t.Errorf("%s answered %v: %v", op, code, err)
	}
	return code
}

func contains(list []codes.Code, c codes.Code) bool {
	for _, x := range list {
		if x == c {
			return true
		}
	}
	return false
}

// twice sends the same request from two goroutines at once, as a kubelet
// retry that overlaps the first attempt: both must answer OK or Aborted
// (the in-flight conflict), and at least one OK.
func (w *world) twice(op string, allowed []codes.Code, rpc func(ctx context.Context) error) bool {
	var wg sync.WaitGroup
	var got [2]codes.Code
	for i := range got {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = w.call(op, allowed, rpc) }()
	}
	wg.Wait()
	return got[0] == codes.OK || got[1] == codes.OK
}

// once sends the request once or, now and then, twice at the same time.
func (w *world) once(r *rand.Rand, op string, allowed []codes.Code, rpc func(ctx context.Context) error) bool {
	if r.IntN(5) == 0 {
		return w.twice(op, append([]codes.Code{codes.Aborted}, allowed...), rpc)
	}
	return w.call(op, allowed, rpc) == codes.OK
}

func (w *world) addSnap(s *snapRec) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.snaps = append(w.snaps, s)
}

// takeSnap removes and returns a random snapshot (nil if none).
func (w *world) takeSnap(r *rand.Rand) *snapRec {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.snaps) == 0 {
		return nil
	}
	i := r.IntN(len(w.snaps))
	s := w.snaps[i]
	w.snaps = append(w.snaps[:i], w.snaps[i+1:]...)
	return s
}

// pickSnap returns a random snapshot whose content is known, left in place.
func (w *world) pickSnap(r *rand.Rand) *snapRec {
	w.mu.Lock()
	defer w.mu.Unlock()
	var known []*snapRec
	for _, s := range w.snaps {
		if s.data != nil {
			known = append(known, s)
		}
	}
	if len(known) == 0 {
		return nil
	}
	return known[r.IntN(len(known))]
}

// Data helpers that report errors instead of failing the test, for workers.

func writeFileSynced(dir, name string, data []byte) error {
	return writeDurable(dir, name, data)
}

func verifyFiles(dir string, files map[string][32]byte) error {
	for name, sum := range files {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if sha256.Sum256(b) != sum {
			return fmt.Errorf("%s/%s: content differs", dir, name)
		}
	}
	return nil
}

func writeBlockSynced(dev string, off int64, data []byte) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		return err
	}
	return f.Sync()
}

func verifyBlocks(dev string, blocks map[int64][]byte) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	for off, want := range blocks {
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, off); err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s at %d: content differs", dev, off)
		}
	}
	return nil
}

func (s *slot) verify() error {
	if s.v.block() {
		return verifyBlocks(s.v.target, s.data.blocks)
	}
	return verifyFiles(s.v.target, s.data.files)
}

var errNoVolume = errors.New("no volume")
