//go:build linux

package loopdev

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// fakeLoop writes a sysfs directory for an attached /sys/block/loopN.
func fakeLoop(t *testing.T, root string, n int, backing string) {
	t.Helper()
	base := filepath.Join(root, "loop"+strconv.Itoa(n))
	for name, v := range map[string]string{
		"loop/backing_file": backing, "loop/dio": "1", "loop/autoclear": "0", "ro": "0",
		"size": "2048", "queue/logical_block_size": "4096", "loop/offset": "0", "loop/sizelimit": "0",
	} {
		p := filepath.Join(base, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestListSkipsDeviceDetachedWhileRead replays the race of issue 9 item 1:
// another process detaches a loop device after List read its backing file
// and before it read the other attributes. List must leave the device out,
// not fail (a failing List made every serving process start fail).
func TestListSkipsDeviceDetachedWhileRead(t *testing.T) {
	for _, tc := range []struct {
		name   string
		vanish func(t *testing.T, base string)
	}{
		{"detached", func(t *testing.T, base string) { os.RemoveAll(filepath.Join(base, "loop")) }},
		{"removed", func(t *testing.T, base string) { os.RemoveAll(base) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			fakeLoop(t, root, 3, "/other/file")
			fakeLoop(t, root, 7, "/ours/mnt/disk")
			victim := filepath.Join(root, "loop3")
			var once sync.Once
			s := sysfs{root: root, read: func(p string) ([]byte, error) {
				b, err := os.ReadFile(p)
				if p == filepath.Join(victim, "loop", "backing_file") && err == nil {
					once.Do(func() { tc.vanish(t, victim) }) // detached right after this read
				}
				return b, err
			}}
			infos, err := s.list(func(string) bool { return true })
			if err != nil {
				t.Fatalf("list while a device detaches: %v", err)
			}
			if len(infos) != 1 || infos[0].Number != 7 || infos[0].BackingFile != "/ours/mnt/disk" {
				t.Fatalf("list = %+v, want only loop7", infos)
			}
		})
	}
}

// TestStatusRereadsDeviceBoundAgain: the device is detached and bound to
// another file between two reads; the answer describes one attachment, not
// a mix of two.
func TestStatusRereadsDeviceBoundAgain(t *testing.T) {
	root := t.TempDir()
	fakeLoop(t, root, 2, "/first")
	var once sync.Once
	s := sysfs{root: root, read: func(p string) ([]byte, error) {
		b, err := os.ReadFile(p)
		if filepath.Base(p) == "dio" {
			once.Do(func() { fakeLoop(t, root, 2, "/second") })
		}
		return b, err
	}}
	info, err := s.status(2)
	if err != nil || info.BackingFile != "/second" {
		t.Fatalf("status = %+v, %v; want the second attachment", info, err)
	}
}

// TestListUnderReadsOnlyOurs: devices outside dir are not even stat'ed
// beyond their backing file's name.
func TestListUnderReadsOnlyOurs(t *testing.T) {
	root := t.TempDir()
	fakeLoop(t, root, 1, "/ours/mnt/disk")
	fakeLoop(t, root, 4, "/ours-not/disk")
	fakeLoop(t, root, 5, "/elsewhere/disk")
	var mu sync.Mutex
	read := map[string]bool{}
	s := sysfs{root: root, read: func(p string) ([]byte, error) {
		mu.Lock()
		read[p] = true
		mu.Unlock()
		return os.ReadFile(p)
	}}
	infos, err := s.list(func(b string) bool { return len(b) > 6 && b[:6] == "/ours/" })
	if err != nil || len(infos) != 1 || infos[0].Number != 1 {
		t.Fatalf("list = %+v, %v", infos, err)
	}
	for p := range read {
		if filepath.Base(p) != "backing_file" && filepath.Base(filepath.Dir(filepath.Dir(p))) != "loop1" &&
			filepath.Base(filepath.Dir(p)) != "loop1" {
			t.Errorf("read %s of a device that is not ours", p)
		}
	}
}

// TestListWhileLoopDevicesChurn is the kernel version: goroutines attach
// and detach loop devices on their own files in a loop while List runs.
// On a List that fails when a device goes away between two sysfs reads,
// this fails within a few hundred calls.
func TestListWhileLoopDevicesChurn(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	churnErr := make(chan error, 4)
	for range 3 {
		file := sparseFile(t, t.TempDir(), 4*mib)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				info, err := AttachInfo(ctx, file, Options{})
				if err != nil {
					if ctx.Err() == nil {
						churnErr <- err
					}
					return
				}
				if err := Detach(info.Path); err != nil {
					churnErr <- err
					return
				}
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	for i := range 2000 {
		if _, err := List(); err != nil {
			t.Fatalf("List call %d while devices come and go: %v", i, err)
		}
		if _, err := ListUnder("/nonexistent-csi-ploop-test"); err != nil {
			t.Fatalf("ListUnder call %d: %v", i, err)
		}
		select {
		case err := <-churnErr:
			t.Fatalf("churn: %v", err)
		default:
		}
	}
}
