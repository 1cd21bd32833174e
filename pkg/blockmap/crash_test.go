package blockmap

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-ploop/csi-ploop/pkg/fuse"
)

// Environment of the serving child (the test binary run again).
const (
	childEnv        = "BLOCKMAP_TEST_CHILD"
	childBackingEnv = "BLOCKMAP_TEST_BACKING"
	childDirEnv     = "BLOCKMAP_TEST_DIR"
	childInitEnv    = "BLOCKMAP_TEST_INIT"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(serveChild())
	}
	os.Exit(m.Run())
}

// serveChild serves the connection it inherited (fd 3: /dev/fuse, fd 4:
// the mount root) on the backing file, fresh or adopted with a re-send,
// prints its INIT state as JSON once serving, and serves until killed.
func serveChild() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	f, err := os.OpenFile(os.Getenv(childBackingEnv), os.O_RDWR, 0)
	if err != nil {
		log.Error("open backing", "err", err)
		return 1
	}
	conn := Conn{Dev: os.NewFile(3, "/dev/fuse"), Root: os.NewFile(4, "root"), Dir: os.Getenv(childDirEnv)}
	if js := os.Getenv(childInitEnv); js != "" {
		conn.Init = new(fuse.InitState)
		if err := json.Unmarshal([]byte(js), conn.Init); err != nil {
			log.Error("init state", "err", err)
			return 1
		}
	}
	s, err := Serve(context.Background(), conn, plainDisk{f}, Options{Resend: conn.Init != nil, Logger: log})
	if err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(s.InitState()); err != nil {
		return 1
	}
	s.Wait()
	return 0
}

// plainDisk is a Disk on a file, for the child.
type plainDisk struct{ f *os.File }

func (d plainDisk) ReadAt(p []byte, off int64) (int, error)  { return d.f.ReadAt(p, off) }
func (d plainDisk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }
func (d plainDisk) Flush() error                             { return d.f.Sync() }
func (d plainDisk) Discard(off, length int64) error {
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}
func (d plainDisk) Size() int64 {
	st, err := d.f.Stat()
	if err != nil {
		return 0
	}
	return st.Size()
}

// keeper holds a mounted connection and runs serving children on it.
type keeper struct {
	conn    Conn
	backing string
	child   *exec.Cmd
	init    string // JSON of the connection's INIT state, "" before the first child
	connID  uint64
}

// start runs a child and waits until it serves.
func (k *keeper) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childBackingEnv+"="+k.backing,
		childDirEnv+"="+k.conn.Dir, childInitEnv+"="+k.init)
	cmd.ExtraFiles = []*os.File{k.conn.Dev, k.conn.Root}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k.child = cmd
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Wait() //nolint:errcheck // it failed; its stderr says why
		t.Fatalf("child did not start serving: %v", err)
	}
	if k.init == "" {
		k.init = line[:len(line)-1]
	}
}

// kill SIGKILLs the child and reaps it: after Wait no thread of it can
// still be writing to the backing file.
func (k *keeper) kill(t *testing.T) {
	t.Helper()
	if k.child == nil {
		return
	}
	k.child.Process.Kill() //nolint:errcheck // it may be gone already
	k.child.Wait()         //nolint:errcheck // killed on purpose
	k.child = nil
}

func (k *keeper) abort() {
	if k.connID != 0 {
		os.WriteFile(filepath.Join(fusectlDir, strconv.FormatUint(k.connID, 10), "abort"), []byte("1"), 0) //nolint:errcheck
	}
}

// newKeeper mounts a connection the test process keeps (it never serves
// it) over a preallocated backing file. Cleanup kills the child and
// unmounts; if the test failed, it aborts the connection first so that
// nothing waits on a mount without a server.
func newKeeper(t *testing.T, size int64) *keeper {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	backing := filepath.Join(dir, "backing")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	conn, err := MountConn(context.Background(), filepath.Join(dir, "mnt"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	k := &keeper{conn: conn, backing: backing}
	t.Cleanup(func() {
		if t.Failed() {
			k.abort()
		}
		k.kill(t)
		k.conn.Root.Close()
		if err := unix.Unmount(k.conn.Dir, 0); err != nil {
			t.Errorf("unmount: %v", err)
			k.abort()
			unix.Unmount(k.conn.Dir, unix.MNT_DETACH) //nolint:errcheck
		}
		k.conn.Dev.Close()
	})
	return k
}

// The serving process is SIGKILLed 20 times during verified writes through
// a loop device; each time a new one adopts the connection the test keeps
// and has the kernel re-send what the dead one had taken. No I/O error,
// every block intact, no request left waiting.
func TestCrashRecoveryWithResend(t *testing.T) {
	const size = 64 * mib
	k := newKeeper(t, size)
	k.start(t)
	var st unix.Stat_t
	if err := unix.Fstat(int(k.conn.Root.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	k.connID = fuse.ConnID(st.Dev)
	var init fuse.InitState
	if err := json.Unmarshal([]byte(k.init), &init); err != nil || !init.CanResend() {
		t.Skipf("kernel cannot re-send (INIT state %s, %v)", k.init, err)
	}

	// Detached before the keeper's cleanup runs: a child still serves.
	dev := attachLoop(t, filepath.Join(k.conn.Dir, DefaultFileName))
	io := startVerifiedIO(t, dev, size, 4)
	t.Cleanup(func() { // first: nothing may wait on a mount nobody serves
		if t.Failed() {
			k.abort()
		}
	})
	if err := mountFusectl(); err != nil {
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	var worst time.Duration
	for i := range 20 {
		io.waitWrites(t, 20+rng.Int64N(80))
		start := time.Now()
		k.kill(t)
		k.start(t)
		worst = max(worst, time.Since(start))
		if i == 0 {
			t.Logf("first recovery: kill to serving again in %v", time.Since(start))
		}
	}
	io.waitWrites(t, 50)
	io.check(t, k.backing)
	t.Logf("slowest kill-to-serving: %v", worst)
	waiting := -1
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if waiting = waitingRequests(t, k.connID); waiting == 0 {
			break
		}
	}
	if waiting != 0 {
		t.Errorf("waiting = %d after the I/O stopped", waiting)
	}
}
