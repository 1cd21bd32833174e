package imagecli

import (
	"context"
	"fmt"
	"io"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/image"
)

func runCheck(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "check", stdio: stdio}
	u := usage{synopsis: "check [--repair] [--json] [--run-dir DIR] DIR|FILE", nargs: 1, text: `
Check every delta of the image directory DIR, or a single delta FILE, and
print the problems found. Exit status: 0 when no errors remain (warnings, such
as a stale in-use mark or leaked space, are printed but allowed), 1 when
errors remain or the check could not run.

--repair fixes what can be fixed (clears the in-use mark, drops BAT entries
that point outside the file, un-shares shared clusters, punches and trims
leaked space) and prints what was repaired. Never repair an image that is
attached or open in another process. A check of an attached image shows its
in-use mark, the space reserved ahead at the end of the top delta and the
clusters written since the last flush as warnings: they are not problems.

With --repair, an image directory first gets the writes its serving process
acknowledged before it died (its pending-allocation journal, kept in the
image's runtime directory under --run-dir until the next attach): the repair
would otherwise punch their clusters as leaked space.`}
	fs := newFlags(e.name)
	repair := fs.Bool("repair", false, "fix what can be fixed")
	asJSON := fs.Bool("json", false, "print pkg/image's Report as JSON")
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	path := pos[0]
	kind, err := classify(path)
	if err != nil {
		return e.fail(err)
	}
	if *repair && kind == kindDir {
		if err := attach.ReplayJournal(*runDir, path, nil); err != nil {
			return e.fail(err)
		}
	}
	r, err := image.Check(path, *repair)
	if err != nil {
		return e.fail(fmt.Errorf("check %s: %w", path, err))
	}
	if *asJSON {
		if code := e.printJSON(r); code != ExitOK {
			return code
		}
	} else {
		printReport(stdio.Stdout, r)
	}
	return e.checkVerdict(path, r, *repair)
}

// checkVerdict returns the exit status of a check and, when errors remain,
// says on stderr what to do.
func (e env) checkVerdict(path string, r *image.Report, repaired bool) int {
	if r.OK() {
		return ExitOK
	}
	n := countProblems(r).errors
	if repaired {
		fmt.Fprintf(e.stdio.Stderr, "csi-ploop image check: %s: %d error(s) could not be repaired; restore the volume from a snapshot or backup\n", path, n)
	} else {
		fmt.Fprintf(e.stdio.Stderr, "csi-ploop image check: %s: %d error(s); with the image not in use, run 'csi-ploop image check --repair %s'\n", path, n, path)
	}
	return ExitFail
}

type problemCounts struct{ errors, warnings, repaired int }

func countProblems(r *image.Report) problemCounts {
	var c problemCounts
	count := func(ps []image.Problem) {
		for _, p := range ps {
			switch {
			case p.Repaired:
				c.repaired++
			case p.Severity == image.SevError:
				c.errors++
			default:
				c.warnings++
			}
		}
	}
	count(r.Problems)
	for _, d := range r.Deltas {
		count(d.Problems)
	}
	return c
}

func printReport(w io.Writer, r *image.Report) {
	if len(r.Problems) > 0 {
		fmt.Fprintln(w, "descriptor:")
		printProblems(w, r.Problems)
	}
	for _, d := range r.Deltas {
		fmt.Fprintf(w, "%s: v%d, %s virtual, %d cluster(s) of %s allocated\n",
			d.Path, d.Version, FormatSize(d.Size), d.Clusters, FormatSize(d.Cluster))
		printProblems(w, d.Problems)
	}
	c := countProblems(r)
	switch {
	case c.errors+c.warnings+c.repaired == 0:
		fmt.Fprintln(w, "result: clean")
	default:
		fmt.Fprintf(w, "result: %d error(s), %d warning(s) remain; %d problem(s) repaired\n", c.errors, c.warnings, c.repaired)
	}
}

func printProblems(w io.Writer, ps []image.Problem) {
	for _, p := range ps {
		label := string(p.Severity)
		if p.Repaired {
			label = "repaired " + label
		}
		fmt.Fprintf(w, "  %s: %s\n", label, p.Message)
	}
}
