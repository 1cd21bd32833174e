package image

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"testing"
)

func TestSmokeDir(t *testing.T) {
	dir := t.TempDir()
	if err := Create(dir, 64<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := img.Chain()
	a := make([]byte, 3<<20)
	rand.Read(a)
	if _, err := c.WriteAt(a, 4096); err != nil {
		t.Fatal(err)
	}
	g, err := img.Snapshot(SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8192)
	rand.Read(b)
	if _, err := c.WriteAt(b, 1<<20+100); err != nil {
		t.Fatal(err)
	}
	copy(a[1<<20+100-4096:], b)
	if err := img.Grow(8 << 30); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(a))
	if _, err := c.ReadAt(got, 4096); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("mismatch %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Check(dir, false)
	if err != nil || !r.Clean() {
		t.Fatalf("check %v %+v", err, r)
	}
	if err := MergeDir(dir, g, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	img, err = OpenDir(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Chain().Depth() != 1 || img.Chain().Size() != 8<<30 {
		t.Fatal("depth/size")
	}
	if _, err := img.Chain().ReadAt(got, 4096); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("mismatch after merge %v", err)
	}
	img.Close()
	raw := filepath.Join(t.TempDir(), "x.raw")
	c2, _ := OpenChain(mustFiles(t, dir), ChainOptions{ReadOnly: true})
	if err := Export(c2, raw); err != nil {
		t.Fatal(err)
	}
	c2.Close()
}

// mustFiles returns the chain files of the image directory dir, bottom..top.
func mustFiles(t *testing.T, dir string) []string {
	t.Helper()
	d, err := ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := d.ChainFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
