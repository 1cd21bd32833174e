package attach_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-ploop/csi-ploop/internal/testhelp"
	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// fixture is one image directory attached through a Client that starts
// real serving processes.
type fixture struct {
	t    *testing.T
	c    *attach.Client
	dir  string // image directory
	work string // scratch space for mount points and exports
}

func newFixture(t *testing.T, size int64) *fixture {
	t.Helper()
	work, err := os.MkdirTemp(theSuite.tmp, "t")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, work: work, dir: filepath.Join(work, "img")}
	f.c = attach.NewClient(attach.AttachOptions{
		Binary: theSuite.binary, RunDir: theSuite.runDir,
	})
	t.Cleanup(f.teardown) // runs last: mounts registered later go first
	if err := image.Create(f.dir, size, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return f
}

// teardown detaches (or, if the server is dead or stuck, kills it and
// cleans up) and removes the scratch space.
func (f *fixture) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.c.Detach(ctx, f.dir); err != nil {
		f.t.Errorf("teardown: detach: %v", err)
		if st, err := f.c.Status(ctx, f.dir); err == nil {
			syscall.Kill(st.PID, syscall.SIGKILL)
			time.Sleep(200 * time.Millisecond)
		}
		if err := f.c.Cleanup(ctx, f.dir); err != nil {
			f.t.Errorf("teardown: cleanup: %v", err)
		}
	}
	os.RemoveAll(f.work)
}

func (f *fixture) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	f.t.Cleanup(cancel)
	return ctx
}

func (f *fixture) attach() string {
	f.t.Helper()
	dev, err := f.c.Attach(f.ctx(), f.dir)
	if err != nil {
		f.t.Fatalf("attach: %v", err)
	}
	return dev
}

func (f *fixture) detach() {
	f.t.Helper()
	if err := f.c.Detach(f.ctx(), f.dir); err != nil {
		f.t.Fatalf("detach: %v", err)
	}
}

func (f *fixture) status() attach.Status {
	f.t.Helper()
	st, err := f.c.Status(f.ctx(), f.dir)
	if err != nil {
		f.t.Fatalf("status: %v", err)
	}
	return st
}

// mount mounts dev and registers an unmount (lazy if need be) for cleanup.
func (f *fixture) mount(dev, fsType string, opts ...string) string {
	f.t.Helper()
	mp, err := os.MkdirTemp(f.work, "mnt")
	if err != nil {
		f.t.Fatal(err)
	}
	args := []string{"-t", fsType}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	testhelp.Run(f.t, "mount", append(args, dev, mp)...)
	f.t.Cleanup(func() { unmountQuiet(mp) })
	return mp
}

func (f *fixture) umount(mp string) {
	f.t.Helper()
	testhelp.Run(f.t, "umount", mp)
}

func unmountQuiet(mp string) {
	if err := syscall.Unmount(mp, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
		syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

func mkfs(t *testing.T, dev, fsType string) {
	t.Helper()
	switch fsType {
	case "ext4":
		testhelp.Run(t, "mkfs.ext4", "-q", "-F", dev)
	case "xfs":
		testhelp.Run(t, "mkfs.xfs", "-q", "-f", dev)
	default:
		t.Fatalf("no mkfs for %s", fsType)
	}
}

// writeRandom writes size random bytes (from seed) to path, fsyncs and
// returns the content's hash.
func writeRandom(path string, size int, seed uint64) ([32]byte, error) {
	buf := randomBytes(size, seed)
	f, err := os.Create(path)
	if err != nil {
		return [32]byte{}, err
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return [32]byte{}, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return [32]byte{}, err
	}
	return sha256.Sum256(buf), f.Close()
}

func randomBytes(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, size)
	for i := 0; i+8 <= len(buf); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			buf[i+k] = byte(v >> (8 * k))
		}
	}
	return buf
}

func verifyFile(t *testing.T, path string, want [32]byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if got := sha256.Sum256(b); !bytes.Equal(got[:], want[:]) {
		t.Fatalf("%s: content differs", path)
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install -y xfsprogs e2fsprogs fio)", tool)
		}
	}
}
