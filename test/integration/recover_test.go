package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRecoverAfterServingProcessesDie: the serving processes of a staged
// filesystem volume and a staged block volume are killed (-9) while the
// driver is down, which leaves their loop devices dead under the mounts.
// The restarted driver reconciles: it attaches both again, mounts the
// filesystem afresh and binds the published targets again, so the same
// target paths work with the data flushed before the kill.
func TestRecoverAfterServingProcessesDie(t *testing.T) {
	h := newHarness(t)
	fsVol := h.createVolume("rec-fs", 256*mi, mountCap("ext4"), nil)
	h.stagePublish(fsVol)
	files := writeFiles(t, fsVol.target, "before-kill", 8, fileSize)
	blk := h.createVolume("rec-blk", 64*mi, blockCap(), nil)
	h.stagePublish(blk)
	data := randomBytes(3 << 20)
	blockWrite(t, blk.target, 1<<20+512, data)

	h.stopDriver()
	killServers(t)
	waitGone(t)
	if _, err := os.ReadFile(filepath.Join(fsVol.target, files[0].name)); err == nil {
		// Cached pages may still answer; a fresh write + fsync must not.
		if err := writeDurable(fsVol.target, "while-dead", []byte("x")); err == nil {
			t.Fatal("I/O still works with the serving process killed: the test kills nothing")
		}
	}

	h.startDriver() // reconciles the staged volumes
	checkFiles(t, fsVol.target, files)
	files = append(files, writeFiles(t, fsVol.target, "after-recovery", 4, fileSize)...)
	checkFiles(t, fsVol.target, files)
	if got := blockRead(t, blk.target, 1<<20+512, len(data)); !bytes.Equal(got, data) {
		t.Fatal("block volume lost data across the recovery")
	}

	h.unpublishUnstage(fsVol)
	h.unpublishUnstage(blk)
	h.deleteVolume(fsVol.id)
	h.deleteVolume(blk.id)
	h.checkNoLeaks()
}

// waitGone waits until no serving process of our binary runs any more.
func waitGone(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); len(ourProcesses()) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("serving processes %v survived SIGKILL", ourProcesses())
		}
	}
}
