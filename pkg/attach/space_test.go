package attach_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/image"
	"github.com/csi-ploop/csi-ploop/pkg/loopdev"
)

func topDelta(t *testing.T, dir string) string {
	t.Helper()
	d, err := image.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.ChainFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return files[len(files)-1]
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	n, err := image.AllocatedBytes(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDiscard: deleting files and fstrim gives the space back in the top.
func TestDiscard(t *testing.T) {
	needTools(t, "mkfs.ext4", "fstrim")
	f := newFixture(t, 1<<30)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	mp := f.mount(dev, "ext4")
	for i := range 4 {
		if _, err := writeRandom(filepath.Join(mp, "big"+string(rune('0'+i))), 64<<20, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	top := topDelta(t, f.dir)
	full := allocated(t, top)
	for i := range 4 {
		os.Remove(filepath.Join(mp, "big"+string(rune('0'+i))))
	}
	testhelp.Run(t, "sync")
	testhelp.Run(t, "fstrim", mp)
	after := allocated(t, top)
	t.Logf("top delta: %d MiB allocated before, %d MiB after fstrim", full>>20, after>>20)
	if full-after < 200<<20 {
		t.Fatalf("fstrim returned %d MiB, want >= 200 MiB", (full-after)>>20)
	}
}

// TestGrowOnline: the mounted filesystem grows with the device.
func TestGrowOnline(t *testing.T) {
	for _, tc := range []struct{ fs, tool string }{{"ext4", "resize2fs"}, {"xfs", "xfs_growfs"}} {
		t.Run(tc.fs, func(t *testing.T) {
			needTools(t, "mkfs."+tc.fs, tc.tool)
			f := newFixture(t, 512<<20)
			dev := f.attach()
			mkfs(t, dev, tc.fs)
			mp := f.mount(dev, tc.fs)
			sum, err := writeRandom(filepath.Join(mp, "keep"), 16<<20, 3)
			if err != nil {
				t.Fatal(err)
			}
			before := fsSize(t, mp)
			if err := f.c.Grow(f.ctx(), f.dir, 2<<30); err != nil {
				t.Fatalf("grow: %v", err)
			}
			if n, err := loopdev.Size(dev); err != nil || n != 2<<30 {
				t.Fatalf("device size %d (%v), want 2 GiB", n, err)
			}
			switch {
			case tc.fs == "xfs":
				testhelp.Run(t, "xfs_growfs", mp)
			case hasCapSysResource(t):
				testhelp.Run(t, "resize2fs", dev)
			default:
				// ext4's online resize ioctl needs CAP_SYS_RESOURCE,
				// which this environment withholds: resize offline.
				t.Log("no CAP_SYS_RESOURCE: ext4 resized offline (device grew online)")
				f.umount(mp)
				testhelp.Run(t, "e2fsck", "-f", "-y", dev)
				testhelp.Run(t, "resize2fs", dev)
				mp = f.mount(dev, tc.fs)
			}
			after := fsSize(t, mp)
			t.Logf("%s: %d MiB -> %d MiB", tc.fs, before>>20, after>>20)
			if after < 3*before {
				t.Fatalf("filesystem did not grow: %d -> %d", before, after)
			}
			if _, err := writeRandom(filepath.Join(mp, "more"), 700<<20, 4); err != nil {
				t.Fatalf("write beyond the old size: %v", err)
			}
			verifyFile(t, filepath.Join(mp, "keep"), sum)
			if st := f.status(); st.Size != 2<<30 {
				t.Fatalf("status size %d", st.Size)
			}
		})
	}
}

// hasCapSysResource reads CapEff of this process (bit 24).
func hasCapSysResource(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

func fsSize(t *testing.T, mp string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(mp, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}
