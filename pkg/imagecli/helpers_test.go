package imagecli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// result is one in-process run of Main.
type result struct {
	code           int
	stdout, stderr string
}

func cli(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// ok runs the command and fails the test unless it exits 0.
func ok(t *testing.T, args ...string) result {
	t.Helper()
	r := cli(t, args...)
	if r.code != ExitOK {
		t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// fails runs the command and checks its exit code and that stderr holds want.
func fails(t *testing.T, code int, want string, args ...string) result {
	t.Helper()
	r := cli(t, args...)
	if r.code != code {
		t.Fatalf("%v: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Fatalf("%v: stderr %q does not contain %q", args, r.stderr, want)
	}
	prefix := "csi-ploop image " + args[0]
	if !strings.HasPrefix(r.stderr, prefix) {
		t.Fatalf("%v: stderr %q does not start with %q", args, r.stderr, prefix)
	}
	return r
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

// writeRaw writes a raw disk of size bytes with random data in the given
// 64 KiB-aligned regions and holes elsewhere.
func writeRaw(t *testing.T, path string, size int64, regions ...int64) []byte {
	t.Helper()
	data := make([]byte, size)
	for _, off := range regions {
		rand.Read(data[off : off+40<<10])
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range regions {
		if _, err := f.WriteAt(data[off:off+40<<10], off); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeImage writes p at off into the image directory dir.
func writeImage(t *testing.T, dir string, p []byte, off int64) {
	t.Helper()
	img, err := image.OpenDir(dir, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.Chain().WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

// importedImage returns a directory imported from a fresh raw file, and the
// raw content.
func importedImage(t *testing.T) (dir string, raw []byte) {
	t.Helper()
	tmp := t.TempDir()
	rawPath := filepath.Join(tmp, "disk.raw")
	raw = writeRaw(t, rawPath, 4<<20, 0, 1<<20, 3<<20+128<<10)
	dir = filepath.Join(tmp, "img")
	ok(t, "import", "--cluster-size", "64K", rawPath, dir)
	return dir, raw
}
