// Package testhelp holds helpers that the kernel tests of several packages
// (pkg/attach, pkg/dataplane) share. Only tests import it.
package testhelp

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// Run runs a command and returns its output; a failure fails the test
// with the output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// FreezeFilled writes size bytes of data into the top delta of the
// detached image dir and freezes it (a snapshot): a merge up of it into
// the new top copies that much, long enough to be interrupted. It returns
// the files of the image's chain.
func FreezeFilled(t testing.TB, dir string, size int64) []string {
	t.Helper()
	img, err := image.OpenDir(dir, image.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := img.Chain().WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := image.SnapshotDir(dir, image.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	desc, err := image.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := desc.ChainFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return files
}
