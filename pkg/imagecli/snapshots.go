package imagecli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// SnapshotList is what "snapshots --json" prints. Fields are only ever added.
type SnapshotList struct {
	Path      string         `json:"path"`
	TopGUID   string         `json:"topGUID"`
	Snapshots []SnapshotInfo `json:"snapshots"` // bottom..top; the last is the writable top
}

// SnapshotInfo is one delta of the chain.
type SnapshotInfo struct {
	GUID       string `json:"guid"`
	ParentGUID string `json:"parentGUID"` // all zeros for the bottom delta
	File       string `json:"file"`       // as DiskDescriptor.xml names it
	Path       string `json:"path"`       // the file it resolves to
	Top        bool   `json:"top"`        // the writable delta, not a snapshot
}

func runSnapshots(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "snapshots", stdio: stdio}
	u := usage{synopsis: "snapshots [--json] DIR", nargs: 1, text: `
List the delta chain of the image directory DIR from the bottom (oldest) to
the top (the writable delta, marked *). Every delta but the top is a snapshot
whose GUID 'merge' and 'export --snapshot' accept.`}
	fs := newFlags(e.name)
	asJSON := fs.Bool("json", false, "print a SnapshotList JSON object (stable field names)")
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	list, err := listSnapshots(pos[0])
	if err != nil {
		return e.fail(err)
	}
	if *asJSON {
		return e.printJSON(list)
	}
	printSnapshots(stdio.Stdout, list)
	return ExitOK
}

func listSnapshots(dir string) (*SnapshotList, error) {
	if err := needDir(dir, "listing snapshots"); err != nil {
		return nil, err
	}
	desc, err := image.ReadDescriptor(dir)
	if err != nil {
		return nil, err
	}
	chain, err := desc.Chain()
	if err != nil {
		return nil, err
	}
	files, err := desc.ChainFiles(dir)
	if err != nil {
		return nil, err
	}
	list := &SnapshotList{Path: dir, TopGUID: desc.Snapshots.TopGUID, Snapshots: []SnapshotInfo{}}
	parent := image.ZeroGUID
	for i, img := range chain {
		list.Snapshots = append(list.Snapshots, SnapshotInfo{GUID: img.GUID, ParentGUID: parent,
			File: img.File, Path: files[i], Top: i == len(chain)-1})
		parent = img.GUID
	}
	return list, nil
}

func printSnapshots(w io.Writer, list *SnapshotList) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GUID\tPARENT\tFILE\tTOP")
	for _, s := range list.Snapshots {
		parent := s.ParentGUID
		if parent == image.ZeroGUID {
			parent = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.GUID, parent, s.File, mark(s.Top))
	}
	tw.Flush()
}
