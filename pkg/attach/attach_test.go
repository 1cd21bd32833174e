package attach_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

// TestRoundTrip: attach, mkfs, mount, write, unmount, detach, re-attach,
// verify; for ext4 and xfs.
func TestRoundTrip(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needTools(t, "mkfs."+fsType)
			f := newFixture(t, 1<<30)
			dev := f.attach()
			if again := f.attach(); again != dev {
				t.Fatalf("second attach: %s, want %s", again, dev)
			}
			mkfs(t, dev, fsType)
			mp := f.mount(dev, fsType)
			sums := map[string][32]byte{}
			for i := range 4 {
				name := filepath.Join(mp, "f"+string(rune('a'+i)))
				sum, err := writeRandom(name, (8<<20)+i*4097, uint64(i+1))
				if err != nil {
					t.Fatal(err)
				}
				sums[filepath.Base(name)] = sum
			}
			f.umount(mp)
			f.detach()
			f.detach() // idempotent
			dev = f.attach()
			mp = f.mount(dev, fsType)
			for name, sum := range sums {
				verifyFile(t, filepath.Join(mp, name), sum)
			}
		})
	}
}

// TestDetachRefusedWhileMounted: the server keeps serving.
func TestDetachRefusedWhileMounted(t *testing.T) {
	f := newFixture(t, 256<<20)
	dev := f.attach()
	mkfs(t, dev, "ext4")
	mp := f.mount(dev, "ext4")
	err := f.c.Detach(f.ctx(), f.dir)
	if !errors.Is(err, attach.ErrBusy) {
		t.Fatalf("detach while mounted: %v, want ErrBusy", err)
	}
	if st := f.status(); st.Device != dev {
		t.Fatalf("status after refused detach: %+v", st)
	}
	sum, err := writeRandom(filepath.Join(mp, "x"), 1<<20, 7)
	if err != nil {
		t.Fatal(err)
	}
	verifyFile(t, filepath.Join(mp, "x"), sum)
}
