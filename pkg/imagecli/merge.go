package imagecli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/durable"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

func runMerge(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "merge", stdio: stdio}
	u := usage{synopsis: "merge [--direction auto|down|up] [--assume-unshared] [--run-dir DIR] DIR GUID", nargs: 2, text: `
Delete snapshot GUID of the image directory DIR: its delta and the delta
above it (its child, possibly the writable top) become one. The image's
content does not change. GUID may be given with or without braces;
'snapshots DIR' lists them. An attached image is merged online by its
serving process while I/O goes on (a background copy, then a short pause
at the switch); one that is not attached, directly.

--direction down copies the child's clusters into the snapshot's delta, up
copies the snapshot's clusters that the child lacks into the child; auto
(the default) takes the one that copies less. Either way only the data
that moves is copied, never the whole disk.

Progress goes to stderr (a bar on a terminal, a line every 10% otherwise),
then one line on stdout says what was copied, how long it took and how
long I/O paused.

A delta that another image reads (the base of a restore or a clone) must not
change, so delta files outside DIR are taken as shared and the merge is
refused when it would write to or delete one; deltas inside DIR are taken as
this image's own. --assume-unshared merges anyway: check first that no other
image's DiskDescriptor.xml names those files.`}
	fs := newFlags(e.name)
	unshared := fs.Bool("assume-unshared", false, "treat delta files outside DIR as used by this image only")
	dirFlag := fs.String("direction", "auto", "`auto`, down (child into the snapshot's delta) or up (into the child)")
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	guid, err := normalizeGUID(pos[1])
	if err != nil {
		return e.usageError(fs, u, err.Error())
	}
	direction, err := parseDirection(*dirFlag)
	if err != nil {
		return e.usageError(fs, u, err.Error())
	}
	if err := needDir(pos[0], "merge"); err != nil {
		return e.fail(err)
	}
	var shared func(string) (bool, error) // nil: outside DIR = shared
	if *unshared {
		shared = func(string) (bool, error) { return false, nil }
	}
	res, online, err := merge(ctx, pos[0], guid, *runDir, direction, shared, stdio)
	if err != nil {
		return e.fail(fmt.Errorf("merge snapshot %s of %s: %w", guid, pos[0], err))
	}
	fmt.Fprintln(stdio.Stdout, mergeSummary(guid, res, online))
	return ExitOK
}

func parseDirection(s string) (image.MergeDirection, error) {
	switch s {
	case "auto", "":
		return image.MergeAuto, nil
	case "down":
		return image.MergeDown, nil
	case "up":
		return image.MergeUp, nil
	}
	return "", fmt.Errorf("--direction %q: want auto, down or up", s)
}

// merge merges snapshot guid of dir with its child, online or offline, and
// removes the dropped delta file (which no chain of dir names any more, and
// which shared said no other chain does).
func merge(ctx context.Context, dir, guid, runDir string, direction image.MergeDirection,
	shared func(string) (bool, error), stdio IO) (attach.MergeResult, bool, error) {
	abs, err := realDir(dir)
	if err != nil {
		return attach.MergeResult{}, false, err
	}
	parent, child, err := snapshotPair(abs, guid)
	if err != nil {
		return attach.MergeResult{}, false, err
	}
	p := newProgress(stdio.Stderr, "merging")
	req := attach.MergeRequest{Parent: parent, Child: child, Direction: direction, Progress: p.update}
	res, online, err := attach.MergeDir(ctx, abs, runDir, req, shared)
	p.finish()
	if err != nil {
		return res, online, err
	}
	if err := durable.Remove(durable.OS{}, res.Dropped); err != nil {
		return res, online, fmt.Errorf("merged, but removing the dropped delta %s failed: %w", res.Dropped, err)
	}
	return res, online, nil
}

// realDir is dir absolute with symbolic links resolved: the serving
// process knows its chain by such paths.
func realDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// snapshotPair returns the delta of snapshot guid and the one above it.
func snapshotPair(dir, guid string) (parent, child string, err error) {
	desc, err := image.ReadDescriptor(dir)
	if err != nil {
		return "", "", err
	}
	chain, err := desc.Chain()
	if err != nil {
		return "", "", err
	}
	files, err := desc.ChainFiles(dir)
	if err != nil {
		return "", "", err
	}
	for i, img := range chain {
		switch {
		case !strings.EqualFold(img.GUID, guid):
		case i == len(chain)-1:
			return "", "", fmt.Errorf("%w: %s is the top delta, not a snapshot", image.ErrInvalid, guid)
		default:
			return files[i], files[i+1], nil
		}
	}
	return "", "", fmt.Errorf("%w: no snapshot %s in %s", image.ErrNotFound, guid, dir)
}

// mergeSummary is the result line of a merge.
func mergeSummary(guid string, res attach.MergeResult, online bool) string {
	how, pause := "offline", ""
	if online {
		how, pause = "online", fmt.Sprintf(", I/O paused %v", res.Pause.Round(time.Microsecond))
	}
	rate := ""
	if s := res.Duration.Seconds(); s > 0 && res.BytesCopied > 0 {
		rate = fmt.Sprintf(" (%s/s)", FormatSize(int64(float64(res.BytesCopied)/s)))
	}
	return fmt.Sprintf("merged snapshot %s (%s, %s): copied %s in %v%s%s; kept %s, removed %s",
		guid, how, res.Direction, FormatSize(res.BytesCopied), res.Duration.Round(time.Millisecond), rate, pause,
		filepath.Base(res.Kept), filepath.Base(res.Dropped))
}
