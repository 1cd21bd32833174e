package imagecli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// usage describes one subcommand for its --help.
type usage struct {
	synopsis string // after "csi-ploop image ": "create [--cluster-size SIZE] DIR SIZE"
	text     string // what it does, what the arguments are
	nargs    int    // exact number of positional arguments
}

// newFlags returns a flag set that reports nothing itself: parse does.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("csi-ploop image "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses args (flags may come before or after the positional
// arguments; "--" ends the flags). ok is false when the command must return
// code right away: after --help (0) or a usage error (2).
func (e env) parse(fs *flag.FlagSet, u usage, args []string) (pos []string, code int, ok bool) {
	pos, err := parseInterspersed(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(e.stdio.Stdout, fs, u)
		return nil, ExitOK, false
	case err != nil:
		return nil, e.usageError(fs, u, err.Error()), false
	case len(pos) != u.nargs:
		msg := fmt.Sprintf("want %d argument(s), got %d", u.nargs, len(pos))
		return nil, e.usageError(fs, u, msg), false
	}
	return pos, ExitOK, true
}

// usageError reports a bad command line and returns ExitUsage.
func (e env) usageError(fs *flag.FlagSet, u usage, msg string) int {
	fmt.Fprintf(e.stdio.Stderr, "csi-ploop image %s: %s\n", e.name, msg)
	fmt.Fprintf(e.stdio.Stderr, "usage: csi-ploop image %s\n", u.synopsis)
	fmt.Fprintf(e.stdio.Stderr, "Run 'csi-ploop image %s --help' for details.\n", e.name)
	return ExitUsage
}

func printUsage(w io.Writer, fs *flag.FlagSet, u usage) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "usage: csi-ploop image %s\n\n%s\n", u.synopsis, strings.TrimSpace(u.text))
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		b.WriteString("\noptions:\n")
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	w.Write(b.Bytes())
}

// parseInterspersed lets flags follow positional arguments, as operators
// type them ("info DIR --json").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// sizeFlag is a flag.Value holding a size parsed by ParseSize.
type sizeFlag struct{ n int64 }

func (s *sizeFlag) String() string {
	if s == nil || s.n == 0 {
		return ""
	}
	return FormatSize(s.n)
}

func (s *sizeFlag) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	s.n = n
	return nil
}

// pathKind is what a DIR|FILE argument names.
type pathKind int

const (
	kindDir  pathKind = iota // an image directory (has DiskDescriptor.xml)
	kindFile                 // a single delta file
)

// classify tells an image directory from a delta file, with messages an
// operator can act on for anything else.
func classify(path string) (pathKind, error) {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return 0, err
	case st.IsDir() && image.IsImageDir(path):
		return kindDir, nil
	case st.IsDir():
		return 0, fmt.Errorf("%s: directory has no %s: not a ploop image directory", path, image.DescriptorFile)
	case st.Mode().IsRegular():
		return kindFile, nil
	}
	return 0, fmt.Errorf("%s: not a regular file or directory", path)
}

// needDir checks that path is an image directory; what needs one says why.
func needDir(path, what string) error {
	kind, err := classify(path)
	if err != nil {
		return err
	}
	if kind == kindFile {
		return fmt.Errorf("%s is a single delta file: %s needs an image directory with %s", path, what, image.DescriptorFile)
	}
	return nil
}

var guidPattern = regexp.MustCompile(`^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$`)

// normalizeGUID accepts a GUID with or without braces and returns ploop's
// braced form.
func normalizeGUID(s string) (string, error) {
	g := strings.TrimSpace(s)
	if !strings.HasPrefix(g, "{") {
		g = "{" + g + "}"
	}
	if !guidPattern.MatchString(g) {
		return "", fmt.Errorf("%q is not a GUID like {8-4-4-4-12 hex digits}", s)
	}
	return g, nil
}
