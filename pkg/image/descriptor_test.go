package image

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDescriptorRoundTripAndChain(t *testing.T) {
	d := NewDescriptor(10<<30, 1<<20, "{11111111-1111-4111-8111-111111111111}", "root.hds")
	d.AddTop("{22222222-2222-4222-8222-222222222222}", "root.hds.{2}")
	d.AddTop("{33333333-3333-4333-8333-333333333333}", "/abs/delta.hds")
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<Parallels_disk_image", "<Disk_Parameters>", "<StorageData>", "<Storage>",
		"<Image>", "<GUID>", "<Type>Compressed</Type>", "<File>root.hds</File>", "<Snapshots>", "<TopGUID>", "<Shot>",
		"<Disk_size>20971520</Disk_size>", "<Blocksize>2048</Blocksize>"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("encoded descriptor lacks %s", want)
		}
	}
	got, err := DecodeDescriptor(b)
	if err != nil {
		t.Fatal(err)
	}
	files, err := got.ChainFiles("/img")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/img/root.hds", "/img/root.hds.{2}", "/abs/delta.hds"}
	if strings.Join(files, ",") != strings.Join(want, ",") || got.Size() != 10<<30 || got.ClusterSize() != 1<<20 {
		t.Fatalf("chain %v size %d cluster %d", files, got.Size(), got.ClusterSize())
	}
}

func TestDescriptorRejectsBadInput(t *testing.T) {
	good := NewDescriptor(1<<30, 1<<20, "{11111111-1111-4111-8111-111111111111}", "root.hds")
	mutate := map[string]func(d *Descriptor){
		"missing image": func(d *Descriptor) { d.Snapshots.TopGUID = "{99999999-1111-4111-8111-111111111111}" },
		"bad guid":      func(d *Descriptor) { d.Storage[0].Images[0].GUID = "../../etc" },
		"loop": func(d *Descriptor) {
			d.Snapshots.Shots[0].ParentGUID = d.Snapshots.Shots[0].GUID
		},
		"raw type":     func(d *Descriptor) { d.Storage[0].Images[0].Type = "Plain" },
		"cluster size": func(d *Descriptor) { d.Storage[0].Blocksize = 3 },
		"zero size":    func(d *Descriptor) { d.Params.DiskSize = 0 },
		"empty file":   func(d *Descriptor) { d.Storage[0].Images[0].File = "" },
	}
	for name, m := range mutate {
		t.Run(name, func(t *testing.T) {
			b, _ := good.Encode()
			d, _ := DecodeDescriptor(b)
			m(d)
			b, _ = d.Encode()
			if _, err := DecodeDescriptor(b); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
		})
	}
	if _, err := DecodeDescriptor([]byte("<not xml")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestCreateOnChainSharesFrozenDeltas(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	if err := Create(src, 8<<20, CreateOptions{ClusterSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(src, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(4, 3<<16)
	mustWrite(t, img.Chain(), 0, data)
	guid, err := img.Snapshot(SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, img.Chain(), 0, pattern(5, 100)) // after the snapshot: not in the clone
	frozen, _ := img.Descriptor().ChainFiles(src)
	img.Close()
	clone := filepath.Join(root, "clone")
	if err := CreateOnChain(clone, frozen[:1], 16<<20, CreateOptions{ClusterSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	if err := CreateOnChain(clone, frozen[:1], 16<<20, CreateOptions{ClusterSize: 64 << 10}); err == nil {
		t.Fatal("second create over an existing image succeeded")
	}
	c, err := OpenDir(clone, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := mustRead(t, c.Chain(), 0, len(data)); string(got) != string(data) || c.Chain().Size() != 16<<20 {
		t.Fatalf("clone of snapshot %s reads wrong", guid)
	}
}

func TestSnapshotDirReadsOnlyTheTop(t *testing.T) {
	dir := t.TempDir()
	if err := Create(dir, 8<<20, CreateOptions{ClusterSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(3, 3<<16)
	mustWrite(t, img.Chain(), 0, data)
	img.Close()
	first, err := SnapshotDir(dir, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Make the bottom delta unreadable as a delta: a snapshot that looked
	// at it (reading its BAT) would fail; one that reads only the top does not.
	bottom := mustFiles(t, dir)[0]
	saved, _ := os.ReadFile(bottom)
	os.WriteFile(bottom, []byte("not a delta"), 0o600)
	second, err := SnapshotDir(dir, SnapshotOptions{})
	os.WriteFile(bottom, saved, 0o600)
	if err != nil {
		t.Fatalf("offline snapshot read below the top: %v", err)
	}
	d, _ := ReadDescriptor(dir)
	if chain, _ := d.Chain(); len(chain) != 3 || !sameGUID(chain[0].GUID, first) || !sameGUID(chain[1].GUID, second) {
		t.Fatalf("chain after two snapshots: %+v", chain)
	}
	img, err = OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := mustRead(t, img.Chain(), 0, len(data)); !bytes.Equal(got, data) {
		t.Fatal("data lost across offline snapshots")
	}
}

func TestSnapshotRefusedAtDepthLimit(t *testing.T) {
	d := NewDescriptor(1<<30, 1<<20, NewGUID(), "root.hds")
	for range maxChainDepth - 1 {
		d.AddTop(NewGUID(), "x")
	}
	if _, _, err := d.withNewTop(SnapshotOptions{}); !errors.Is(err, ErrChainTooDeep) {
		t.Fatalf("snapshot of a %d-deep chain: %v", maxChainDepth, err)
	}
	b, _ := d.Encode()
	if _, err := DecodeDescriptor(b); err != nil {
		t.Fatalf("a chain at the limit must stay readable: %v", err)
	}
}
