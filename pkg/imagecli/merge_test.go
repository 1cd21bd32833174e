package imagecli

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMergeDirections: an offline merge in each direction leaves the
// content as it was, drops the snapshot from the chain, removes the
// dropped delta's file and prints one result line with what it copied.
// auto picks the direction that copies less: the child holds 100 KiB, its
// snapshot 3 clusters of data, so down.
func TestMergeDirections(t *testing.T) {
	summary := regexp.MustCompile(`^merged snapshot \{[-0-9a-f]+\} \(offline, (down|up)\): copied [0-9.]+ [KMG]iB in [^;]+; kept \S+, removed \S+\n$`)
	for _, c := range []struct{ flag, want string }{{"down", "down"}, {"up", "up"}, {"auto", "down"}} {
		dir, _ := importedImage(t)
		guid := strings.TrimSpace(ok(t, "snapshot", dir).stdout)
		patch := bytes.Repeat([]byte{0xCD}, 100<<10)
		writeImage(t, dir, patch, 2<<20)
		tmp := t.TempDir()
		ok(t, "export", dir, filepath.Join(tmp, "before.raw"))
		before := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)

		r := ok(t, "merge", "--direction", c.flag, dir, guid)
		m := summary.FindStringSubmatch(r.stdout)
		if m == nil || m[1] != c.want {
			t.Fatalf("--direction %s: stdout %q, want a %s merge", c.flag, r.stdout, c.want)
		}
		ok(t, "export", dir, filepath.Join(tmp, "after.raw"))
		if !bytes.Equal(readFile(t, filepath.Join(tmp, "before.raw")), readFile(t, filepath.Join(tmp, "after.raw"))) {
			t.Fatalf("--direction %s changed the content", c.flag)
		}
		after := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)
		if len(after.Snapshots) != 1 || after.TopGUID != before.TopGUID {
			t.Fatalf("--direction %s: chain after %+v", c.flag, after)
		}
		dropped := before.Snapshots[1].Path // up drops the snapshot's file, down the child's
		if c.want == "up" {
			dropped = before.Snapshots[0].Path
		}
		if _, err := os.Stat(dropped); !os.IsNotExist(err) {
			t.Fatalf("--direction %s: the dropped delta %s is still there: %v", c.flag, dropped, err)
		}
		ok(t, "check", dir)
	}
}

func TestMergeUsage(t *testing.T) {
	dir, _ := importedImage(t)
	guid := strings.TrimSpace(ok(t, "snapshot", dir).stdout)
	fails(t, ExitUsage, "want auto, down or up", "merge", "--direction", "sideways", dir, guid)
	if r := ok(t, "merge", "--help"); !strings.Contains(r.stdout, "online") || !strings.Contains(r.stdout, "--direction") {
		t.Fatalf("--help: %s", r.stdout)
	}
}

// fakeClock steps a progress display's time.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func testProgress(tty bool) (*progress, *bytes.Buffer, *fakeClock) {
	var b bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	p := newProgress(&b, "merging")
	p.tty, p.now, p.began = tty, clock.now, clock.t
	return p, &b, clock
}

// TestProgressLines: off a terminal a line every 10% (not one per update),
// and nothing during the first second (a short merge prints only its
// result).
func TestProgressLines(t *testing.T) {
	p, out, clock := testProgress(false)
	p.update(10<<20, 100<<20)
	if out.Len() != 0 {
		t.Fatalf("progress within the quiet second: %q", out)
	}
	clock.t = clock.t.Add(2 * time.Second)
	for done := int64(0); done <= 100<<20; done += 1 << 20 {
		p.update(done, 100<<20)
	}
	p.finish()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 11 || lines[0] != "merging:   0% (0 B of 100 MiB)" || lines[10] != "merging: 100% (100 MiB of 100 MiB)" ||
		strings.Contains(out.String(), "\r") {
		t.Fatalf("lines:\n%s", out)
	}
}

// TestProgressBar: on a terminal one line redrawn in place, at most every
// 100ms, always at 100%, ended by finish.
func TestProgressBar(t *testing.T) {
	p, out, clock := testProgress(true)
	clock.t = clock.t.Add(2 * time.Second)
	p.update(25<<20, 100<<20)
	p.update(30<<20, 100<<20) // within 100ms: not drawn
	clock.t = clock.t.Add(200 * time.Millisecond)
	p.update(50<<20, 100<<20)
	p.update(100<<20, 100<<20)
	p.finish()
	s := out.String()
	if strings.Count(s, "\r") != 3 || strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") ||
		!strings.Contains(s, "[###############---------------]  50%  50 MiB / 100 MiB") ||
		!strings.Contains(s, " 100%  100 MiB / 100 MiB") {
		t.Fatalf("bar: %q", s)
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Fatal("a buffer is taken for a terminal")
	}
}

// TestInfoShowsWhatAMergeGaveBack: info reports each delta's allocated
// bytes and their sum; merging a snapshot whose data the child overwrote
// gives that space back.
func TestInfoShowsWhatAMergeGaveBack(t *testing.T) {
	dir, raw := importedImage(t)
	guid := strings.TrimSpace(ok(t, "snapshot", dir).stdout)
	writeImage(t, dir, bytes.Repeat([]byte{0xEE}, len(raw)), 0) // overwrites every cluster
	before := decode[InfoOutput](t, ok(t, "info", "--json", dir).stdout)
	if len(before.Deltas) != 2 || before.AllocatedBytes != before.Deltas[0].AllocatedBytes+before.Deltas[1].AllocatedBytes ||
		before.Deltas[0].AllocatedBytes == 0 {
		t.Fatalf("info before: %+v", before)
	}
	if r := ok(t, "info", dir); !strings.Contains(r.stdout, "allocated:") || !strings.Contains(r.stdout, "ALLOCATED") {
		t.Fatalf("info: %s", r.stdout)
	}
	ok(t, "merge", dir, guid)
	after := decode[InfoOutput](t, ok(t, "info", "--json", dir).stdout)
	if len(after.Deltas) != 1 || after.AllocatedBytes >= before.AllocatedBytes {
		t.Fatalf("allocated %d before the merge, %d after", before.AllocatedBytes, after.AllocatedBytes)
	}
	t.Logf("allocated: %d before the merge, %d after", before.AllocatedBytes, after.AllocatedBytes)
}
