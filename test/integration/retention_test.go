package integration

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-ploop/csi-ploop/internal/iocheck"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// The retention loop of issue 10, as a user with a snapshot schedule runs
// it: a 1 GiB ext4 volume; every round overwrites one 32 MiB file (fsync),
// takes a snapshot and deletes the previous one. Deleting a snapshot merges
// its delta away (online: the volume stays published), so the chain stays
// short and the storage root holds about the live data, where it used to
// keep every round's 32 MiB (40 rounds: 1.33 GiB, depth 41).

const (
	churnRounds   = 40
	churnFileSize = 32 << 20
	churnVolume   = 1 << 30
)

// TestRetentionChurn: afterwards the chain is at most 3 deep, the storage
// root's delta files hold at most 1.5x the live data, and the newest
// snapshot restores with the file as it was.
func TestRetentionChurn(t *testing.T) { retentionChurn(t, false) }

// TestRetentionChurnUnderIO: the same with a verifying O_DIRECT writer on
// a second file of the volume (16 MiB, written in place) during every
// round, so every merge runs online under I/O: it sees no I/O error and no
// wrong data. The writer rewrites its file between the newest snapshot and
// the end, so that snapshot still holds the file's previous 16 MiB: the
// space allowed is 1.5x the live data plus that (the issue's "live data
// plus what live snapshots still hold").
func TestRetentionChurnUnderIO(t *testing.T) { retentionChurn(t, true) }

// churnWriterSize is the file the writer of TestRetentionChurnUnderIO
// rewrites.
const churnWriterSize = 16 << 20

func retentionChurn(t *testing.T, withWriter bool) {
	metrics := freeAddress(t)
	h := newHarnessWith(t, t.TempDir(), harnessOptions{args: []string{"--metrics-address", metrics}})
	v := h.createVolume("churn", churnVolume, mountCap("ext4"), nil)
	h.stagePublish(v)
	// live is the data the volume's files hold at the end; held what the
	// newest snapshot holds that they no longer show.
	live, held := int64(churnFileSize), int64(0)
	var w *iocheck.Writer
	if withWriter {
		w = startChurnWriter(t, filepath.Join(v.target, "iocheck.dat"))
		defer func() {
			if w != nil {
				w.Stop()
			}
		}()
		live += churnWriterSize
		held += churnWriterSize
	}
	began := time.Now()
	var last *csi.Snapshot
	var sum [32]byte
	for i := range churnRounds {
		sum = overwriteFile(t, filepath.Join(v.target, "data"), churnFileSize, uint64(i))
		snap := h.createSnapshot(v.id, fmt.Sprintf("churn-%02d", i))
		if last != nil {
			h.deleteSnapshot(last.GetSnapshotId())
		}
		last = snap
	}
	took := time.Since(began)
	if w != nil {
		r := w.Stop()
		w = nil
		t.Logf("writer during the rounds: %v", r)
		if !r.OK() || r.Writes == 0 {
			t.Errorf("writer: %d I/O errors (%s), %d verify errors (%s), %d writes",
				r.IOErrors, r.FirstIOError, r.VerifyErrors, r.FirstVerifyError, r.Writes)
		}
	}
	depth := chainDepth(t, filepath.Join(h.root, "volumes", v.id))
	space := deltaSpace(t, h.root)
	m := mergeFigures(h.readLog())
	var st syscall.Statfs_t
	if err := syscall.Statfs(v.target, &st); err == nil {
		t.Logf("filesystem used %d bytes", int64(st.Blocks-st.Bfree)*st.Bsize)
	}
	for _, f := range chainFiles(t, filepath.Join(h.root, "volumes", v.id)) {
		n, _ := image.AllocatedBytes(f)
		t.Logf("delta %s: %d bytes", filepath.Base(f), n)
	}
	ratio := float64(space) / float64(live+held)
	t.Logf("CHURN writer=%v rounds=%d depth=%d space=%d live=%d held=%d ratio=%.2f merges=%d mergeBytes=%d worstPause=%v took=%v",
		withWriter, churnRounds, depth, space, live, held, ratio, m.count, m.bytes, m.worstPause, took.Round(time.Millisecond))
	if depth > 3 {
		t.Errorf("chain depth %d after %d rounds, want <= 3", depth, churnRounds)
	}
	if ratio > 1.5 {
		t.Errorf("the storage root's deltas hold %d bytes for %d of live data and %d the newest snapshot holds (%.2fx), want <= 1.5x",
			space, live, held, ratio)
	}
	if m.count < churnRounds-1 {
		t.Errorf("%d merges logged for %d deleted snapshots", m.count, churnRounds-1)
	}
	online, copied := scrapeMerges(t, metrics)
	if online != float64(m.count) || copied != float64(m.bytes) {
		t.Errorf("/metrics counts %v online merges copying %v bytes; the log %d copying %d", online, copied, m.count, m.bytes)
	}
	restored := h.createVolume("churn-restore", churnVolume, mountCap("ext4"), fromSnapshot(last.GetSnapshotId()))
	h.stagePublish(restored)
	if got := fileSum(t, filepath.Join(restored.target, "data")); got != sum {
		t.Fatal("the newest snapshot restored with other data than its round wrote")
	}
}

// startChurnWriter writes the writer's file whole first (so that its
// O_DIRECT writes later change data only, not the filesystem's block map)
// and starts a verifying writer on it. No fdatasync: O_DIRECT writes reach
// the volume by themselves, and a sync every few writes would have ext4
// rewrite its whole 32 MiB journal over the run, space that measures the
// filesystem's journal rather than the merges.
func startChurnWriter(t *testing.T, path string) *iocheck.Writer {
	t.Helper()
	overwriteFile(t, path, churnWriterSize, 1<<20)
	w, err := iocheck.Start(iocheck.Options{Path: path, Size: churnWriterSize, Seed: rand.Uint64()})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// overwriteFile overwrites the file at path in place with size bytes of
// round's data, fsyncs it and returns the data's hash. In place (no
// truncation) as a database rewrites its file: the filesystem keeps the
// blocks, so every round changes the same clusters.
func overwriteFile(t *testing.T, path string, size int, round uint64) [32]byte {
	t.Helper()
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(round), byte(round >> 8), 0xc4})
	r.Read(data)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatalf("round %d: write: %v", round, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("round %d: fsync: %v", round, err)
	}
	return sha256.Sum256(data)
}

// chainDepth is the number of deltas in the chain of image dir.
func chainDepth(t *testing.T, dir string) int {
	t.Helper()
	return len(chainFiles(t, dir))
}

// chainFiles are the delta files of image dir, bottom..top.
func chainFiles(t *testing.T, dir string) []string {
	t.Helper()
	desc, err := image.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := desc.ChainFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// deltaSpace is what the file system stores (st_blocks) for every delta
// file under the storage root.
func deltaSpace(t *testing.T, root string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(filepath.Join(root, "deltas"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return err
		}
		total += st.Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// freeAddress is a local TCP address nothing listens on (for /metrics).
func freeAddress(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// scrapeMerges reads the driver's merge counters from /metrics.
func scrapeMerges(t *testing.T, addr string) (online, copied float64) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("/metrics has no %s:\n%s", name, b)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	return value(`csi_ploop_merge_total{mode="online"}`), value("csi_ploop_merge_copied_bytes_total")
}

// merges sums the "Merged deltas" lines of the driver's log.
type merges struct {
	count      int
	bytes      int64
	worstPause time.Duration
}

var mergedLine = regexp.MustCompile(`"Merged deltas".* bytesCopied=(\d+) duration="?([^" ]+)"? pause="?([^" ]+)"?`)

func mergeFigures(log string) merges {
	var m merges
	for _, g := range mergedLine.FindAllStringSubmatch(log, -1) {
		m.count++
		n, _ := strconv.ParseInt(g[1], 10, 64)
		m.bytes += n
		if p, err := time.ParseDuration(g[3]); err == nil {
			m.worstPause = max(m.worstPause, p)
		}
	}
	return m
}
