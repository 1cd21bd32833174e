package imagecli

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

func TestCreateInfoCheck(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	ok(t, "create", "--cluster-size", "64K", dir, "64M")
	r := ok(t, "info", dir)
	for _, want := range []string{"64 MiB (67108864 bytes)", "64 KiB", "depth:         1", "root.hds", "{"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("info output lacks %q:\n%s", want, r.stdout)
		}
	}
	info := decode[InfoOutput](t, ok(t, "info", dir, "--json").stdout)
	if info.Kind != "directory" || info.VirtualSize != 64<<20 || info.ClusterSize != 64<<10 ||
		info.Depth != 1 || len(info.Deltas) != 1 || !info.Deltas[0].Top || info.Deltas[0].GUID != info.TopGUID ||
		info.Deltas[0].Version != 2 || info.Deltas[0].InUse {
		t.Fatalf("info: %+v", info)
	}
	if r := ok(t, "check", dir); !strings.Contains(r.stdout, "result: clean") {
		t.Fatalf("check: %s", r.stdout)
	}
	rep := decode[image.Report](t, ok(t, "check", "--json", dir).stdout)
	if len(rep.Deltas) != 1 {
		t.Fatalf("check --json: %+v", rep)
	}
}

func TestCreateErrors(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "vol")
	fails(t, ExitUsage, `invalid size "10X"`, "create", dir, "10X")
	fails(t, ExitUsage, "not a multiple of 512", "create", dir, "1000")
	fails(t, ExitUsage, "want 2 argument(s), got 1", "create", dir)
	fails(t, ExitUsage, "flag provided but not defined: -bogus", "create", "--bogus", dir, "1G")
	fails(t, ExitUsage, `invalid value "7Q" for flag -cluster-size`, "create", "--cluster-size", "7Q", dir, "1G")
	fails(t, ExitFail, "power of two", "create", "--cluster-size", "3K", dir, "1G")
	ok(t, "create", dir, "1G")
	fails(t, ExitFail, "exists", "create", dir, "1G")
}

func TestMissingPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	for _, args := range [][]string{
		{"info", missing}, {"check", missing}, {"snapshot", missing}, {"snapshots", missing},
		{"merge", missing, "{00000000-0000-0000-0000-000000000001}"}, {"grow", missing, "1G"},
		{"export", missing, missing + ".raw"}, {"import", missing, missing + ".dir"},
	} {
		fails(t, ExitFail, "no such file or directory", args...)
	}
}

func TestNotAnImageDir(t *testing.T) {
	empty := t.TempDir()
	for _, cmd := range []string{"info", "check", "snapshot", "snapshots"} {
		fails(t, ExitFail, "not a ploop image directory", cmd, empty)
	}
}

func TestCorruptFile(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.hds")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("junk"), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	fails(t, ExitFail, "corrupt ploop image", "info", bad)
	r := fails(t, ExitFail, "corrupt ploop image", "check", bad)
	if !strings.Contains(r.stderr, "hint:") {
		t.Errorf("no hint: %s", r.stderr)
	}
	fails(t, ExitFail, "corrupt ploop image", "export", bad, bad+".raw")
	short := filepath.Join(t.TempDir(), "short.hds")
	os.WriteFile(short, []byte("WithouFreSpacExt"), 0o600)
	fails(t, ExitFail, "shorter than a delta header", "info", short)
}

func TestImportExportRoundTrip(t *testing.T) {
	dir, raw := importedImage(t)
	out := filepath.Join(t.TempDir(), "out.raw")
	ok(t, "export", dir, out)
	if !bytes.Equal(readFile(t, out), raw) {
		t.Fatal("export differs from the imported raw file")
	}
	fails(t, ExitFail, "already exists", "export", dir, out)
	ok(t, "export", "--force", dir, out)
	fails(t, ExitFail, "exists", "import", out, dir)
	info := decode[InfoOutput](t, ok(t, "info", "--json", dir).stdout)
	if info.VirtualSize != int64(len(raw)) || info.ClusterSize != 64<<10 || info.Deltas[0].AllocatedBytes == 0 {
		t.Fatalf("info: %+v", info)
	}
}

func TestSnapshotExportMerge(t *testing.T) {
	dir, old := importedImage(t)
	r := ok(t, "snapshot", dir)
	guid := strings.TrimSpace(r.stdout)
	if !guidPattern.MatchString(guid) || r.stdout != guid+"\n" || r.stderr != "" {
		t.Fatalf("snapshot stdout %q stderr %q", r.stdout, r.stderr)
	}
	cur := bytes.Clone(old)
	patch := bytes.Repeat([]byte{0xAB}, 100<<10)
	copy(cur[1<<20+5000:], patch)
	writeImage(t, dir, patch, 1<<20+5000)

	tmp := t.TempDir()
	ok(t, "export", "--snapshot", guid, dir, filepath.Join(tmp, "old.raw"))
	ok(t, "export", dir, filepath.Join(tmp, "cur.raw"))
	if !bytes.Equal(readFile(t, filepath.Join(tmp, "old.raw")), old) {
		t.Fatal("export --snapshot does not give the content at snapshot time")
	}
	if !bytes.Equal(readFile(t, filepath.Join(tmp, "cur.raw")), cur) {
		t.Fatal("export does not give the current content")
	}
	list := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)
	if len(list.Snapshots) != 2 || list.Snapshots[0].GUID != guid || list.Snapshots[0].Top ||
		!list.Snapshots[1].Top || list.Snapshots[1].ParentGUID != guid || list.TopGUID != list.Snapshots[1].GUID {
		t.Fatalf("snapshots: %+v", list)
	}
	if r := ok(t, "snapshots", dir); !strings.Contains(r.stdout, guid) {
		t.Fatalf("snapshots: %s", r.stdout)
	}
	fails(t, ExitFail, "top delta", "merge", dir, list.TopGUID)
	ok(t, "merge", dir, strings.Trim(guid, "{}")) // braces optional
	list = decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)
	if len(list.Snapshots) != 1 {
		t.Fatalf("after merge: %+v", list)
	}
	ok(t, "export", "--force", dir, filepath.Join(tmp, "cur.raw"))
	if !bytes.Equal(readFile(t, filepath.Join(tmp, "cur.raw")), cur) {
		t.Fatal("merge changed the content")
	}
}

// A delta outside DIR (the base of a restore or clone) may be read by other
// images: merge refuses to change it unless told it is not shared.
func TestMergeRefusesOutsideDeltaByDefault(t *testing.T) {
	pool, dir := t.TempDir(), filepath.Join(t.TempDir(), "vol")
	base := filepath.Join(pool, "base.hds")
	if err := image.CreateDelta(base, 64<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := image.CreateOnChain(dir, []string{base}, 64<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	list := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout)
	baseGUID := list.Snapshots[0].GUID
	r := fails(t, ExitFail, "another chain references it", "merge", dir, baseGUID)
	if !strings.Contains(r.stderr, "--assume-unshared") {
		t.Errorf("no hint: %s", r.stderr)
	}
	if r := ok(t, "merge", "--help"); !strings.Contains(r.stdout, "outside DIR are taken as shared") {
		t.Errorf("--help does not explain the default: %s", r.stdout)
	}
	ok(t, "merge", "--assume-unshared", dir, baseGUID)
	if list := decode[SnapshotList](t, ok(t, "snapshots", "--json", dir).stdout); len(list.Snapshots) != 1 {
		t.Fatalf("after merge: %+v", list)
	}
}

func TestUnknownGUID(t *testing.T) {
	dir, _ := importedImage(t)
	unknown := "{11111111-2222-3333-4444-555555555555}"
	r := fails(t, ExitFail, "not found", "merge", dir, unknown)
	if !strings.Contains(r.stderr, "snapshots DIR") {
		t.Errorf("no hint: %s", r.stderr)
	}
	fails(t, ExitFail, "not found", "export", "--snapshot", unknown, dir, filepath.Join(t.TempDir(), "x.raw"))
	fails(t, ExitUsage, "is not a GUID", "merge", dir, "abc")
	fails(t, ExitUsage, "is not a GUID", "export", "--snapshot", "abc", dir, "x.raw")
}

func TestGrow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	ok(t, "create", dir, "64M")
	ok(t, "grow", dir, "1Gi")
	if info := decode[InfoOutput](t, ok(t, "info", "--json", dir).stdout); info.VirtualSize != 1<<30 {
		t.Fatalf("after grow: %+v", info)
	}
	fails(t, ExitFail, "cannot shrink", "grow", dir, "64M")
	fails(t, ExitUsage, "invalid size", "grow", dir, "1.5G")
	delta := filepath.Join(dir, "root.hds")
	ok(t, "grow", delta, "2G")
	if info := decode[InfoOutput](t, ok(t, "info", "--json", delta).stdout); info.VirtualSize != 2<<30 || info.Kind != "delta" {
		t.Fatalf("after grow of a file: %+v", info)
	}
}

func TestBareDeltaFile(t *testing.T) {
	dir, raw := importedImage(t)
	delta := filepath.Join(dir, image.RootDeltaFile)
	info := decode[InfoOutput](t, ok(t, "info", "--json", delta).stdout)
	if info.Kind != "delta" || info.Depth != 1 || info.Deltas[0].GUID != "" || info.VirtualSize != int64(len(raw)) {
		t.Fatalf("info: %+v", info)
	}
	ok(t, "info", delta)
	ok(t, "check", delta)
	out := filepath.Join(t.TempDir(), "out.raw")
	ok(t, "export", delta, out)
	if !bytes.Equal(readFile(t, out), raw) {
		t.Fatal("export of a delta file differs")
	}
	want := "needs an image directory with DiskDescriptor.xml"
	fails(t, ExitFail, want, "snapshot", delta)
	fails(t, ExitFail, want, "snapshots", delta)
	fails(t, ExitFail, want, "merge", delta, "{11111111-2222-3333-4444-555555555555}")
	fails(t, ExitFail, want, "export", "--snapshot", "{11111111-2222-3333-4444-555555555555}", delta, out+"2")
}

func TestCheckRepairCorruptBAT(t *testing.T) {
	dir, raw := importedImage(t)
	delta := filepath.Join(dir, image.RootDeltaFile)
	f, err := os.OpenFile(delta, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var entry [4]byte
	binary.LittleEndian.PutUint32(entry[:], 0x00FFFFFF) // cluster 0 -> far past the end
	if _, err := f.WriteAt(entry[:], image.HeaderSize); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r := cli(t, "check", dir)
	if r.code != ExitFail || !strings.Contains(r.stdout, "  error: ") || !strings.Contains(r.stderr, "check --repair") {
		t.Fatalf("check of a corrupt BAT: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	fails(t, ExitFail, "corrupt ploop image", "export", dir, filepath.Join(t.TempDir(), "x.raw"))
	r = ok(t, "check", "--repair", dir)
	if !strings.Contains(r.stdout, "repaired error: ") {
		t.Fatalf("repair did not say what it repaired:\n%s", r.stdout)
	}
	ok(t, "check", dir)
	out := filepath.Join(t.TempDir(), "after.raw")
	ok(t, "export", dir, out)
	want := bytes.Clone(raw)
	clear(want[:64<<10]) // the dropped cluster now reads as zeros
	if !bytes.Equal(readFile(t, out), want) {
		t.Fatal("content after repair")
	}
}

func TestCheckWarningsExitZero(t *testing.T) {
	dir, _ := importedImage(t)
	img, err := image.OpenDir(dir, image.OpenOptions{}) // sets the in-use mark
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	r := ok(t, "check", dir)
	if !strings.Contains(r.stdout, "warning: in-use mark") {
		t.Fatalf("no warning:\n%s", r.stdout)
	}
	if info := decode[InfoOutput](t, ok(t, "info", "--json", dir).stdout); !info.Deltas[0].InUse {
		t.Fatalf("info does not show the in-use mark: %+v", info)
	}
	fails(t, ExitFail, "in use by another process", "snapshot", dir)
}

func TestHelpAndDispatch(t *testing.T) {
	for name := range newTable().cmds {
		r := ok(t, name, "--help")
		if !strings.HasPrefix(r.stdout, "usage: csi-ploop image "+name) {
			t.Errorf("%s --help: %q", name, r.stdout)
		}
		if r := ok(t, "help", name); !strings.HasPrefix(r.stdout, "usage: csi-ploop image "+name) {
			t.Errorf("help %s: %q", name, r.stdout)
		}
	}
	if r := ok(t, "--help"); !strings.Contains(r.stdout, "snapshots") {
		t.Errorf("--help: %s", r.stdout)
	}
	if r := cli(t); r.code != ExitUsage || !strings.Contains(r.stderr, "usage:") {
		t.Errorf("no args: %+v", r)
	}
	if r := cli(t, "frobnicate"); r.code != ExitUsage || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %+v", r)
	}
}
