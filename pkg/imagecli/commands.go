package imagecli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

func runCreate(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "create", stdio: stdio}
	u := usage{synopsis: "create [--cluster-size SIZE] DIR SIZE", nargs: 2, text: `
Create DIR (made if missing) as an image directory: DiskDescriptor.xml and an
empty sparse delta root.hds of SIZE bytes (e.g. 10G). Instant at any size.
Fails if DIR already holds an image.`}
	fs := newFlags(e.name)
	cluster := &sizeFlag{}
	fs.Var(cluster, "cluster-size", "cluster `SIZE`, a power of two from 64K to 16M (default 1M)")
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	size, err := ParseSize(pos[1])
	if err != nil {
		return e.usageError(fs, u, err.Error())
	}
	if err := image.Create(pos[0], size, image.CreateOptions{ClusterSize: cluster.n}); err != nil {
		return e.fail(fmt.Errorf("create %s: %w", pos[0], err))
	}
	return ExitOK
}

func runSnapshot(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "snapshot", stdio: stdio}
	u := usage{synopsis: "snapshot [--run-dir DIR] IMAGEDIR", nargs: 1, text: `
Freeze the top delta of the image directory DIR: it becomes a snapshot and
new writes go to a fresh delta. On an attached image the serving process
takes it online (a mounted filesystem is frozen meanwhile). Prints the
snapshot's GUID, and nothing else, on stdout.`}
	fs := newFlags(e.name)
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	if err := needDir(pos[0], "a snapshot"); err != nil {
		return e.fail(err)
	}
	guid, err := attach.SnapshotDir(ctx, pos[0], *runDir, image.SnapshotOptions{})
	if err != nil {
		return e.fail(fmt.Errorf("snapshot %s: %w", pos[0], err))
	}
	fmt.Fprintln(stdio.Stdout, guid)
	return ExitOK
}

func runMerge(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "merge", stdio: stdio}
	u := usage{synopsis: "merge [--assume-unshared] [--run-dir DIR] DIR GUID", nargs: 2, text: `
Delete snapshot GUID of the (not attached) image directory DIR: the delta
above it is merged down into it. The image's content does not change. GUID may
be given with or without braces; 'snapshots DIR' lists them.

A delta that another image reads (the base of a restore or a clone) must not
change, so delta files outside DIR are taken as shared and the merge is
refused when it would write to or delete one; deltas inside DIR are taken as
this image's own. --assume-unshared merges anyway: check first that no other
image's DiskDescriptor.xml names those files.

Writes a serving process of DIR acknowledged before it died are applied first
(its pending-allocation journal, in the image's runtime directory under
--run-dir).`}
	fs := newFlags(e.name)
	unshared := fs.Bool("assume-unshared", false, "treat delta files outside DIR as used by this image only")
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	guid, err := normalizeGUID(pos[1])
	if err != nil {
		return e.usageError(fs, u, err.Error())
	}
	if err := needDir(pos[0], "merge"); err != nil {
		return e.fail(err)
	}
	if err := attach.ReplayJournal(*runDir, pos[0], nil); err != nil {
		return e.fail(err)
	}
	var opts image.MergeOptions // default: outside DIR = shared
	if *unshared {
		opts.Shared = func(string) (bool, error) { return false, nil }
	}
	if err := image.MergeDir(pos[0], guid, opts); err != nil {
		return e.fail(fmt.Errorf("merge snapshot %s of %s: %w", guid, pos[0], err))
	}
	return ExitOK
}

func runGrow(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "grow", stdio: stdio}
	u := usage{synopsis: "grow [--run-dir DIR] IMAGEDIR|FILE SIZE", nargs: 2, text: `
Raise the virtual size of the image directory IMAGEDIR (online when it is
attached), or of a single delta FILE, to SIZE. Images never shrink. The file
system inside is not resized.`}
	fs := newFlags(e.name)
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	size, err := ParseSize(pos[1])
	if err != nil {
		return e.usageError(fs, u, err.Error())
	}
	if err := grow(ctx, pos[0], *runDir, size); err != nil {
		return e.fail(fmt.Errorf("grow %s to %d bytes: %w", pos[0], size, err))
	}
	return ExitOK
}

func grow(ctx context.Context, path, runDir string, size int64) error {
	kind, err := classify(path)
	if err != nil {
		return err
	}
	if kind == kindDir {
		return attach.GrowDir(ctx, path, runDir, size) // online when attached
	}
	c, err := image.OpenChain([]string{path}, image.ChainOptions{})
	if err != nil {
		return err
	}
	return errors.Join(c.Grow(size), c.Close())
}

func runImport(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "import", stdio: stdio}
	u := usage{synopsis: "import [--cluster-size SIZE] RAWFILE DIR", nargs: 2, text: `
Create the image directory DIR holding the raw disk image RAWFILE. Holes and
all-zero clusters of RAWFILE take no space in the image. The virtual size is
RAWFILE's size rounded up to 512 bytes. DIR must not hold an image yet.`}
	fs := newFlags(e.name)
	cluster := &sizeFlag{}
	fs.Var(cluster, "cluster-size", "cluster `SIZE`, a power of two from 64K to 16M (default 1M)")
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	raw, dir := pos[0], pos[1]
	if st, err := os.Stat(raw); err != nil {
		return e.fail(err)
	} else if !st.Mode().IsRegular() {
		return e.fail(fmt.Errorf("%s: not a regular file", raw))
	}
	if err := image.Import(raw, dir, image.CreateOptions{ClusterSize: cluster.n}); err != nil {
		return e.fail(fmt.Errorf("import %s into %s: %w", raw, dir, err))
	}
	return ExitOK
}

func runExport(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "export", stdio: stdio}
	u := usage{synopsis: "export [--snapshot GUID] [--force] DIR|FILE RAWFILE", nargs: 2, text: `
Write the virtual disk of the image directory DIR (or of a single delta FILE)
to RAWFILE as a sparse raw image. With --snapshot, write the disk as it was
when that snapshot was taken. RAWFILE appears whole or not at all.`}
	fs := newFlags(e.name)
	snap := fs.String("snapshot", "", "export snapshot `GUID` instead of the current content")
	force := fs.Bool("force", false, "replace RAWFILE if it exists")
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	guid := ""
	if *snap != "" {
		g, err := normalizeGUID(*snap)
		if err != nil {
			return e.usageError(fs, u, err.Error())
		}
		guid = g
	}
	if _, err := os.Lstat(pos[1]); err == nil && !*force {
		return e.fail(fmt.Errorf("%s already exists; remove it or pass --force", pos[1]))
	}
	if err := export(pos[0], guid, pos[1]); err != nil {
		return e.fail(fmt.Errorf("export %s to %s: %w", pos[0], pos[1], err))
	}
	return ExitOK
}

// export opens the chain to write read-only and exports it.
func export(path, guid, raw string) error {
	c, err := openForExport(path, guid)
	if err != nil {
		return err
	}
	return errors.Join(image.Export(c, raw), c.Close())
}

func openForExport(path, guid string) (*image.Chain, error) {
	kind, err := classify(path)
	switch {
	case err != nil:
		return nil, err
	case kind == kindFile && guid != "":
		return nil, fmt.Errorf("%s is a single delta file: --snapshot needs an image directory with %s", path, image.DescriptorFile)
	case kind == kindFile:
		return image.OpenChain([]string{path}, image.ChainOptions{ReadOnly: true})
	case guid != "":
		return image.OpenSnapshot(path, guid)
	}
	desc, err := image.ReadDescriptor(path)
	if err != nil {
		return nil, err
	}
	files, err := desc.ChainFiles(path)
	if err != nil {
		return nil, err
	}
	return image.OpenChain(files, image.ChainOptions{ReadOnly: true})
}
