package image

// BenchmarkMerge: the same 256 MiB changed in a child delta, merged into
// its parent, on a 1 GiB and on a 64 GiB volume (sparse files on the real
// file system). The times must be equal within noise: a merge costs the
// data it moves, not the volume size. Run with:
//
//	go test ./pkg/image -run '^$' -bench Merge -benchtime 3x

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	benchMergeChanged = 256 << 20
	benchMergeBase    = 32 << 20 // the parent's own data
	benchMergeCluster = 1 << 20
)

func BenchmarkMerge(b *testing.B) {
	for _, size := range []int64{1 << 30, 64 << 30} {
		for _, dir := range []MergeDirection{MergeDown, MergeUp} {
			b.Run(fmt.Sprintf("%dGiB/%s", size>>30, dir), func(b *testing.B) {
				b.SetBytes(benchMergeChanged)
				for b.Loop() {
					b.StopTimer()
					parent, child := benchMergePair(b, size)
					b.StartTimer()
					if _, err := MergeDeltaFiles(context.Background(), parent, child, PairMergeOptions{Direction: dir}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// benchMergePair writes a parent with benchMergeBase of data and a child
// with benchMergeChanged of data spread over the whole volume (1 MiB every
// size/256 MiB), both durable and dropped from the page cache. For the up
// direction the parent's clusters the child lacks are what moves: the
// child overwrites none of the parent's, so that is benchMergeBase;
// SetBytes counts the changed data for both, to compare across sizes.
func benchMergePair(b *testing.B, size int64) (parent, child string) {
	dir, err := os.MkdirTemp("", "bench-merge-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	parent, child = filepath.Join(dir, "parent.hds"), filepath.Join(dir, "child.hds")
	buf := benchAligned(benchMergeCluster)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	fill := func(path string, n int64, stride int64, first int64) {
		if err := CreateDelta(path, size, benchMergeCluster); err != nil {
			b.Fatal(err)
		}
		c, err := OpenChain([]string{path}, ChainOptions{})
		if err != nil {
			b.Fatal(err)
		}
		for k := int64(0); k < n/benchMergeCluster; k++ {
			if _, err := c.WriteAt(buf, first+k*stride); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		dropCache(b, path)
	}
	stride := size / (benchMergeChanged / benchMergeCluster)
	fill(parent, benchMergeBase, benchMergeCluster, benchMergeCluster)
	fill(child, benchMergeChanged, stride, 0)
	return parent, child
}

// dropCache evicts a synced file's pages, so the merge reads the disk.
func dropCache(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkMergeOnline: online merges of 64 MiB with a writer doing 4 KiB
// random writes (a flush every 16) all along; reports the switch pause.
func BenchmarkMergeOnline(b *testing.B) {
	for _, tc := range []struct {
		name string
		dir  MergeDirection
		top  bool
	}{{"top-down", MergeDown, true}, {"top-up", MergeUp, true}, {"frozen-down", MergeDown, false}} {
		b.Run(tc.name, func(b *testing.B) {
			var pause, worst time.Duration
			for b.Loop() {
				b.StopTimer()
				img, files := benchOnlineImage(b)
				stop := benchWriter(b, img.Chain())
				parent, child := files[len(files)-2], files[len(files)-1]
				if !tc.top {
					parent, child = files[0], files[1]
				}
				b.StartTimer()
				st, err := img.Merge(context.Background(), parent, child, PairMergeOptions{Direction: tc.dir})
				b.StopTimer()
				if werr := stop(); err != nil || werr != nil {
					b.Fatal(err, werr)
				}
				pause += st.Pause
				worst = max(worst, st.Pause)
				if err := img.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(pause.Microseconds())/float64(b.N), "pause-us/op")
			b.ReportMetric(float64(worst.Microseconds()), "worst-pause-us")
		})
	}
}

// benchOnlineImage: [64 MiB, 64 MiB, top with 64 MiB] on a 1 GiB volume.
func benchOnlineImage(b *testing.B) (*Image, []string) {
	dir := b.TempDir()
	if err := Create(dir, 1<<30, CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	buf := benchAligned(benchMergeCluster)
	for layer := int64(0); layer < 3; layer++ {
		for k := int64(0); k < 64; k++ {
			if _, err := img.Chain().WriteAt(buf, (layer*64+k*3)*benchMergeCluster); err != nil {
				b.Fatal(err)
			}
		}
		if layer < 2 {
			if _, err := img.Snapshot(SnapshotOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := img.Chain().Flush(); err != nil {
		b.Fatal(err)
	}
	return img, img.Chain().Deltas()
}

// benchWriter writes until the returned stop is called.
func benchWriter(b *testing.B, c *Chain) (stop func() error) {
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		buf := benchAligned(benchIO)
		offs := benchRandOffsets(1 << 30)
		for i := 0; ; i++ {
			select {
			case <-done:
				errc <- nil
				return
			default:
			}
			if _, err := c.WriteAt(buf, offs[i&(len(offs)-1)]); err != nil {
				errc <- err
				return
			}
			if i%16 == 15 {
				if err := c.Flush(); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	return func() error {
		close(done)
		return <-errc
	}
}
