package blockmap

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

// The settings that make loop-on-FUSE fast must really be in effect: the
// negotiated INIT state, the kernel's view of the connection, and the
// request sizes that reach the Disk.
func TestMountTuning(t *testing.T) {
	d := newFileDisk(t, 8*mib)
	s := mountDisk(t, d, Options{})

	st := s.InitState()
	if st.Flags&fuse.FlagAsyncDIO == 0 || st.Flags&fuse.FlagMaxPages == 0 {
		t.Errorf("INIT flags %#x lack ASYNC_DIO or MAX_PAGES", st.Flags)
	}
	if st.MaxWrite != 1<<20 || st.MaxPages != 256 || st.MaxBackground != DefaultMaxBackground {
		t.Errorf("INIT state %+v; want max_write 1 MiB, 256 pages, max_background %d", st, DefaultMaxBackground)
	}

	if err := mountFusectl(); err != nil {
		t.Fatal(err)
	}
	conn := filepath.Join(fusectlDir, strconv.FormatUint(s.connID, 10))
	b, err := os.ReadFile(filepath.Join(conn, "max_background"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(DefaultMaxBackground) {
		t.Errorf("max_background = %q, %v; want %d", b, err, DefaultMaxBackground)
	}

	// A 4 MiB direct write arrives as 1 MiB requests.
	f, err := os.OpenFile(s.FilePath(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedTestBuffer(4 * mib)
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if got := d.maxWrite.Load(); got != mib {
		t.Errorf("largest write reaching the Disk: %d bytes; want %d", got, mib)
	}
	if d.unaligned.Load() != 0 {
		t.Errorf("%d Disk calls got a buffer that is not page aligned", d.unaligned.Load())
	}
}

// A kernel request timeout asked for in INIT is negotiated (Linux 6.14+,
// FUSE 7.43), and latched for the connection: a successor sees it in the
// INIT state it adopts.
func TestKernelRequestTimeout(t *testing.T) {
	d := newFileDisk(t, mib)
	s := mountDisk(t, d, Options{KernelRequestTimeout: 90 * time.Second})
	st := s.InitState()
	if st.KernelFlags&fuse.FlagRequestTimeout == 0 {
		t.Skipf("kernel (7.%d) has no FUSE_REQUEST_TIMEOUT", st.KernelMinor)
	}
	if st.RequestTimeout != 90 || st.Flags&fuse.FlagRequestTimeout == 0 {
		t.Fatalf("INIT state %+v; want request_timeout 90 s", st)
	}
	c, err := s.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Init.RequestTimeout != 90 {
		t.Errorf("Conn carries request_timeout %d", c.Init.RequestTimeout)
	}
	f := openFile(t, s)
	if _, err := f.WriteAt(pattern(4096, 1), 0); err != nil {
		t.Fatalf("write with a request timeout: %v", err)
	}
}
