package imagecli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/csi-ploop/csi-ploop/pkg/image"
)

// InfoOutput is what "info --json" prints. Fields are only ever added, never
// renamed or removed: scripts may rely on them.
type InfoOutput struct {
	Path        string      `json:"path"`
	Kind        string      `json:"kind"`        // "directory" or "delta"
	VirtualSize int64       `json:"virtualSize"` // bytes
	ClusterSize int64       `json:"clusterSize"` // bytes
	Depth       int         `json:"depth"`       // number of deltas
	TopGUID     string      `json:"topGUID,omitempty"`
	Deltas      []DeltaInfo `json:"deltas"` // bottom..top
	// AllocatedBytes is what the file system stores for all the deltas
	// (a merge of a deleted snapshot shows here).
	AllocatedBytes int64 `json:"allocatedBytes"`
}

// DeltaInfo describes one delta file of an image.
type DeltaInfo struct {
	GUID           string `json:"guid,omitempty"` // empty for a bare delta file
	File           string `json:"file"`           // as DiskDescriptor.xml names it
	Path           string `json:"path"`           // the file it resolves to
	Top            bool   `json:"top"`            // the writable delta
	Version        int    `json:"version"`        // 1 or 2
	InUse          bool   `json:"inUse"`          // in-use mark: open for writing, or not closed cleanly
	VirtualSize    int64  `json:"virtualSize"`    // from the delta header
	AllocatedBytes int64  `json:"allocatedBytes"` // bytes the file system stores
}

func runInfo(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "info", stdio: stdio}
	u := usage{synopsis: "info [--json] DIR|FILE", nargs: 1, text: `
Show the virtual size, cluster size and delta chain of the image directory DIR
or of a single delta FILE, with the bytes each delta file stores (ALLOCATED)
and their sum. Safe while the image is attached (reads only).`}
	fs := newFlags(e.name)
	asJSON := fs.Bool("json", false, "print an InfoOutput JSON object (stable field names)")
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	info, err := collectInfo(pos[0])
	if err != nil {
		return e.fail(err)
	}
	if *asJSON {
		return e.printJSON(info)
	}
	printInfo(stdio.Stdout, info)
	return ExitOK
}

func collectInfo(path string) (*InfoOutput, error) {
	kind, err := classify(path)
	if err != nil {
		return nil, err
	}
	if kind == kindDir {
		return dirInfo(path)
	}
	d, h, err := deltaInfo(path)
	if err != nil {
		return nil, err
	}
	d.File, d.Top = path, true
	return &InfoOutput{Path: path, Kind: "delta", VirtualSize: h.Size(), ClusterSize: h.ClusterSize(),
		Depth: 1, Deltas: []DeltaInfo{d}, AllocatedBytes: d.AllocatedBytes}, nil
}

func dirInfo(dir string) (*InfoOutput, error) {
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
	out := &InfoOutput{Path: dir, Kind: "directory", VirtualSize: desc.Size(), ClusterSize: desc.ClusterSize(),
		Depth: len(chain), TopGUID: desc.Snapshots.TopGUID, Deltas: []DeltaInfo{}}
	for i, img := range chain {
		d, _, err := deltaInfo(files[i])
		if err != nil {
			return nil, err
		}
		d.GUID, d.File, d.Top = img.GUID, img.File, i == len(chain)-1
		out.Deltas = append(out.Deltas, d)
		out.AllocatedBytes += d.AllocatedBytes
	}
	return out, nil
}

func deltaInfo(path string) (DeltaInfo, image.Header, error) {
	h, err := readHeader(path)
	if err != nil {
		return DeltaInfo{}, h, err
	}
	alloc, err := image.AllocatedBytes(path)
	if err != nil {
		return DeltaInfo{}, h, err
	}
	return DeltaInfo{Path: path, Version: h.Version, InUse: h.InUse, VirtualSize: h.Size(), AllocatedBytes: alloc}, h, nil
}

// readHeader reads and validates the header of the delta file at path.
func readHeader(path string) (image.Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return image.Header{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return image.Header{}, err
	}
	buf := make([]byte, image.HeaderSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		if err == io.EOF {
			return image.Header{}, fmt.Errorf("%s: %w: %d-byte file is shorter than a delta header", path, image.ErrCorrupt, st.Size())
		}
		return image.Header{}, fmt.Errorf("read %s: %w", path, err)
	}
	h, err := image.DecodeHeader(buf, st.Size())
	if err != nil {
		return image.Header{}, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

func printInfo(w io.Writer, info *InfoOutput) {
	fmt.Fprintf(w, "image:         %s (%s)\n", info.Path, info.Kind)
	fmt.Fprintf(w, "virtual size:  %s (%d bytes)\n", FormatSize(info.VirtualSize), info.VirtualSize)
	fmt.Fprintf(w, "cluster size:  %s (%d bytes)\n", FormatSize(info.ClusterSize), info.ClusterSize)
	fmt.Fprintf(w, "depth:         %d\n", info.Depth)
	fmt.Fprintf(w, "allocated:     %s (%d bytes, all deltas)\n\n", FormatSize(info.AllocatedBytes), info.AllocatedBytes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tGUID\tFILE\tALLOCATED\tIN-USE\tVERSION\tTOP")
	for i, d := range info.Deltas {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\tv%d\t%s\n", i, orDash(d.GUID), d.File,
			FormatSize(d.AllocatedBytes), yesNo(d.InUse), d.Version, mark(d.Top))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func mark(b bool) string {
	if b {
		return "*"
	}
	return ""
}

// printJSON writes v as indented JSON on stdout.
func (e env) printJSON(v any) int {
	enc := json.NewEncoder(e.stdio.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return e.fail(fmt.Errorf("write JSON: %w", err))
	}
	return ExitOK
}
