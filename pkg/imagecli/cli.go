// Package imagecli implements "csi-ploop image ...", the operator's command
// line for ploop image directories and single delta files: the equivalent of
// the ploop(8) tool, built on pkg/image.
//
// Subcommands live in a table (name -> command). Each group of commands adds
// itself through a registration function called from newTable, so a new file
// of this package (e.g. attach/detach) only needs one line there.
package imagecli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// Exit codes of every subcommand.
const (
	ExitOK    = 0 // success; check: no errors remain (warnings allowed)
	ExitFail  = 1 // the operation failed, or check found errors that remain
	ExitUsage = 2 // bad command line: nothing was done
)

// IO is where a command writes: results on Stdout, diagnostics on Stderr.
type IO struct {
	Stdout io.Writer
	Stderr io.Writer
}

// runFunc runs one subcommand with its arguments (the name excluded).
type runFunc func(ctx context.Context, args []string, stdio IO) int

// command is one entry of the table.
type command struct {
	name    string
	summary string // one line for "csi-ploop image --help"
	run     runFunc
}

// table maps subcommand names to commands.
type table struct {
	cmds map[string]command
}

// newTable builds the command table. Every group of subcommands registers
// itself here.
func newTable() *table {
	t := &table{cmds: make(map[string]command)}
	registerImageCommands(t)
	registerAttachCommands(t)
	return t
}

// register adds a command; a duplicate name is a programming error.
func (t *table) register(name, summary string, run runFunc) {
	if _, dup := t.cmds[name]; dup {
		panic("imagecli: command registered twice: " + name)
	}
	t.cmds[name] = command{name: name, summary: summary, run: run}
}

// registerImageCommands adds the offline image commands.
func registerImageCommands(t *table) {
	t.register("create", "create an empty image directory", runCreate)
	t.register("info", "show size, clusters and deltas of an image", runInfo)
	t.register("check", "check (and repair) an image or delta file", runCheck)
	t.register("snapshot", "freeze the top delta; prints the snapshot GUID", runSnapshot)
	t.register("snapshots", "list the delta chain, bottom to top", runSnapshots)
	t.register("merge", "delete a snapshot by merging its child into it", runMerge)
	t.register("grow", "raise the virtual size", runGrow)
	t.register("import", "make an image directory from a raw disk file", runImport)
	t.register("export", "write an image (or a snapshot) as a raw disk file", runExport)
}

// Main runs "csi-ploop image ARGS..." (args exclude "image") and returns the
// process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return newTable().dispatch(ctx, args, IO{Stdout: stdout, Stderr: stderr})
}

func (t *table) dispatch(ctx context.Context, args []string, stdio IO) int {
	if len(args) == 0 {
		t.usage(stdio.Stderr)
		return ExitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		return t.help(ctx, args[1:], stdio)
	}
	cmd, ok := t.cmds[name]
	if !ok {
		fmt.Fprintf(stdio.Stderr, "csi-ploop image: unknown command %q\n\n", name)
		t.usage(stdio.Stderr)
		return ExitUsage
	}
	if err := ctx.Err(); err != nil {
		fmt.Fprintf(stdio.Stderr, "csi-ploop image %s: %v\n", name, err)
		return ExitFail
	}
	return cmd.run(ctx, args[1:], stdio)
}

// help prints the command list, or "help CMD" the command's own usage.
func (t *table) help(ctx context.Context, args []string, stdio IO) int {
	if len(args) == 0 {
		t.usage(stdio.Stdout)
		return ExitOK
	}
	if cmd, ok := t.cmds[args[0]]; ok {
		return cmd.run(ctx, []string{"--help"}, stdio)
	}
	fmt.Fprintf(stdio.Stderr, "csi-ploop image help: unknown command %q\n", args[0])
	return ExitUsage
}

func (t *table) usage(w io.Writer) {
	names := make([]string, 0, len(t.cmds))
	for name := range t.cmds {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("usage: csi-ploop image COMMAND [OPTIONS] ARGS...\n\n")
	b.WriteString("Offline operations on ploop image directories (DiskDescriptor.xml + deltas)\n")
	b.WriteString("and single delta files. Commands:\n\n")
	for _, name := range names {
		fmt.Fprintf(&b, "  %-10s %s\n", name, t.cmds[name].summary)
	}
	b.WriteString("\nSIZE: bytes, or a number with K, M, G or T (binary units; Ki, KiB... also accepted).\n")
	b.WriteString("Run 'csi-ploop image COMMAND --help' for the options of a command.\n")
	io.WriteString(w, b.String())
}

// env is what a running command needs to report.
type env struct {
	name  string // subcommand name
	stdio IO
}

// fail reports an error of the operation and returns ExitFail.
func (e env) fail(err error) int {
	fmt.Fprintf(e.stdio.Stderr, "csi-ploop image %s: %v\n", e.name, err)
	if h := hint(err); h != "" {
		fmt.Fprintf(e.stdio.Stderr, "hint: %s\n", h)
	}
	return ExitFail
}

// hint suggests what to do about well-known errors.
func hint(err error) string {
	switch {
	case errors.Is(err, image.ErrBusy):
		return "the image is open in another process (attached?); detach it first"
	case errors.Is(err, image.ErrCorrupt):
		return "run 'csi-ploop image check PATH' for details, 'check --repair' (image not in use) to fix what can be fixed"
	case errors.Is(err, image.ErrNotFound):
		return "'csi-ploop image snapshots DIR' lists the GUIDs"
	case errors.Is(err, image.ErrShared):
		return "another image may read that delta; if none does, run again with --assume-unshared"
	case errors.Is(err, attach.ErrMerging):
		return "a merge is running on the image; 'csi-ploop image status DIR' shows its progress"
	case errors.Is(err, image.ErrReadOnly):
		return "v1 (WithoutFreeSpace) deltas can only be read; export and import to convert"
	}
	return ""
}
