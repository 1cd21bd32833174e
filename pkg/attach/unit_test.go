package attach

import (
	"errors"
	"fmt"
	"testing"
)

func TestParseMountLine(t *testing.T) {
	e, ok := parseMountLine(`36 35 7:3 / /mnt/with\040space rw,noatime shared:1 - ext4 /dev/loop3 rw`)
	if !ok || e.major != 7 || e.minor != 3 || e.mountPoint != "/mnt/with space" || e.fsType != "ext4" {
		t.Fatalf("got %+v %v", e, ok)
	}
	if _, ok := parseMountLine("garbage"); ok {
		t.Fatal("garbage parsed")
	}
	if got := unescapeMount(`a\134b\011`); got != "a\\b\t" {
		t.Fatalf("unescape: %q", got)
	}
}

func TestRemoteErrorKeepsSentinel(t *testing.T) {
	for _, s := range []error{ErrBusy, ErrInvalid, ErrAborted} {
		err := remoteError(errResponse(fmt.Errorf("ctx: %w", s)))
		if !errors.Is(err, s) {
			t.Errorf("%v lost its sentinel: %v", s, err)
		}
	}
	if err := remoteError(errResponse(errors.New("x"))); err == nil {
		t.Fatal("nil error")
	}
}

func TestRuntimeDirIsShortAndStable(t *testing.T) {
	a, b := runtimeDir(DefaultRunDir, "/x/y"), runtimeDir(DefaultRunDir, "/x/y")
	if a != b || len(a) != len(DefaultRunDir)+17 {
		t.Fatalf("%s %s", a, b)
	}
}
