package imagecli

import (
	"context"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"512": 512, "65536": 64 << 10, "64K": 64 << 10, "64k": 64 << 10, "64Ki": 64 << 10,
		"64KiB": 64 << 10, "512M": 512 << 20, "10G": 10 << 30, "10gib": 10 << 30, "1T": 1 << 40,
		" 2G ": 2 << 30,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"": "invalid size", "G": "whole number", "1.5G": "whole number", "-1G": "whole number",
		"+1G": "whole number", "10B": "whole number", "10GB": "whole number", "10X": "whole number",
		"100": "not a multiple of 512", "0": "greater than zero", "0G": "greater than zero",
		"99999999999T": "too large", "99999999999999999999": "too large", "10i": `"i" must follow`,
	}
	for in, want := range bad {
		if _, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q) error %v, want %q", in, err, want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		512: "512 B", 64 << 10: "64 KiB", 10 << 30: "10 GiB", 3 << 19: "1.5 MiB", 1 << 40: "1 TiB",
	} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  []string
		json bool
	}{
		{[]string{"a", "--json", "b"}, []string{"a", "b"}, true},
		{[]string{"--json", "a"}, []string{"a"}, true},
		{[]string{"a", "--", "--json"}, []string{"a", "--json"}, false},
		{nil, nil, false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		j := fs.Bool("json", false, "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || !reflect.DeepEqual(pos, tc.pos) || *j != tc.json {
			t.Errorf("%q: pos %q json %v err %v", tc.args, pos, *j, err)
		}
	}
}

func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb strings.Builder
	if code := Main(ctx, []string{"info", "x"}, &out, &errb); code != ExitFail || !strings.Contains(errb.String(), "canceled") {
		t.Fatalf("exit %d, %q", code, errb.String())
	}
}
