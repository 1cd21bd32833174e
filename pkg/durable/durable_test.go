package durable

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rec.json")
	for _, content := range []string{"first", "second, longer content", "3"} {
		if err := WriteFile(OS{}, p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Fatalf("content %q, %v; want %q", got, err, content)
		}
	}
	if _, err := os.Stat(p + TempSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp file left behind: %v", err)
	}
}

// failingFS fails the named step once and records the steps it saw.
type failingFS struct {
	OS
	fail  string
	steps []string
}

type failingFile struct {
	*os.File
	fs *failingFS
}

func (f failingFile) Sync() error {
	f.fs.steps = append(f.fs.steps, "sync")
	if f.fs.fail == "sync" {
		return errors.New("injected sync failure")
	}
	return f.File.Sync()
}

func (f *failingFS) CreateFile(path string) (File, error) {
	f.steps = append(f.steps, "create")
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return failingFile{File: file, fs: f}, nil
}

func (f *failingFS) Rename(o, n string) error {
	f.steps = append(f.steps, "rename")
	if f.fail == "rename" {
		return errors.New("injected rename failure")
	}
	return f.OS.Rename(o, n)
}

func (f *failingFS) SyncDir(dir string) error {
	f.steps = append(f.steps, "syncdir")
	if f.fail == "syncdir" {
		return errors.New("injected syncdir failure")
	}
	return f.OS.SyncDir(dir)
}

func TestWriteFileOrderAndFailures(t *testing.T) {
	for _, step := range []string{"", "sync", "rename", "syncdir"} {
		t.Run("fail="+step, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "rec")
			if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			fsys := &failingFS{fail: step}
			err := WriteFile(fsys, p, []byte("new"))
			if got := strings.Join(fsys.steps, ","); step == "" && got != "create,sync,rename,syncdir" {
				t.Fatalf("steps %s: the data must be synced before the rename, the dir after", got)
			}
			if (err != nil) != (step != "") {
				t.Fatalf("err = %v with failing step %q", err, step)
			}
			got, _ := os.ReadFile(p)
			switch step {
			case "sync", "rename":
				if string(got) != "old" {
					t.Fatalf("a failed write replaced the file: %q", got)
				}
			default:
				if string(got) != "new" {
					t.Fatalf("content %q, want new", got)
				}
			}
			if _, err := os.Stat(p + TempSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temp file left behind after failing %q: %v", step, err)
			}
		})
	}
}

func TestRemoveIsIdempotent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := Remove(OS{}, p); err != nil {
			t.Fatal(err)
		}
	}
}
