package image

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/csi-ploop/csi-ploop/pkg/durable"
)

// DescriptorFile is the name of the descriptor in an image directory.
const DescriptorFile = "DiskDescriptor.xml"

// ErrChainTooDeep means a snapshot would make the chain deeper than ploop
// descriptors allow (1024 deltas).
var ErrChainTooDeep = errors.New("snapshot chain too deep")

// ZeroGUID is the parent of the bottom snapshot.
const ZeroGUID = "{00000000-0000-0000-0000-000000000000}"

const (
	maxDescriptorBytes = 4 << 20
	maxChainDepth      = 1024
	imageTypeExpanded  = "Compressed" // ploop's name for a sparse (expanded) delta
)

var guidPattern = regexp.MustCompile(`^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$`)

// Descriptor is DiskDescriptor.xml in ploop's shape.
type Descriptor struct {
	XMLName   xml.Name       `xml:"Parallels_disk_image"`
	Version   string         `xml:"Version,attr"`
	Params    DiskParameters `xml:"Disk_Parameters"`
	Storage   []Storage      `xml:"StorageData>Storage"`
	Snapshots Snapshots      `xml:"Snapshots"`
}

// DiskParameters describes the virtual disk; sizes are in sectors.
type DiskParameters struct {
	DiskSize  uint64        `xml:"Disk_size"`
	Cylinders uint32        `xml:"Cylinders"`
	Heads     uint32        `xml:"Heads"`
	Sectors   uint32        `xml:"Sectors"`
	Padding   uint32        `xml:"Padding"`
	UID       string        `xml:"UID,omitempty"`
	Name      string        `xml:"Name,omitempty"`
	Misc      Miscellaneous `xml:"Miscellaneous"`
}

// Miscellaneous holds ploop's compatibility level.
type Miscellaneous struct {
	CompatLevel string `xml:"CompatLevel"`
	Checksum    string `xml:"Checksum,omitempty"`
}

// Storage is one extent of the disk with its images (deltas); Blocksize is
// the cluster size in sectors.
type Storage struct {
	Start     uint64      `xml:"Start"`
	End       uint64      `xml:"End"`
	Blocksize uint32      `xml:"Blocksize"`
	Images    []DescImage `xml:"Image"`
}

// DescImage names one delta file.
type DescImage struct {
	GUID string `xml:"GUID"`
	Type string `xml:"Type"`
	File string `xml:"File"`
}

// Snapshots is the snapshot tree; TopGUID is the writable delta.
type Snapshots struct {
	TopGUID string `xml:"TopGUID"`
	Shots   []Shot `xml:"Shot"`
}

// Shot links a delta to its parent.
type Shot struct {
	GUID       string `xml:"GUID"`
	ParentGUID string `xml:"ParentGUID"`
}

// NewGUID returns a random GUID in ploop's braced form.
func NewGUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return "{" + h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:] + "}"
}

// NewDescriptor describes a one-delta image.
func NewDescriptor(size, clusterSize int64, guid, file string) *Descriptor {
	h, _ := NewHeader(size, clusterSize)
	d := &Descriptor{Version: "1.0"}
	d.Params = DiskParameters{DiskSize: h.Sectors, Cylinders: h.Cylinders, Heads: h.Heads,
		Sectors: h.Tracks, Misc: Miscellaneous{CompatLevel: "level2"}}
	d.Storage = []Storage{{End: h.Sectors, Blocksize: h.Tracks,
		Images: []DescImage{{GUID: guid, Type: imageTypeExpanded, File: file}}}}
	d.Snapshots = Snapshots{TopGUID: guid, Shots: []Shot{{GUID: guid, ParentGUID: ZeroGUID}}}
	return d
}

// Size returns the virtual size in bytes.
func (d *Descriptor) Size() int64 { return int64(d.Params.DiskSize) * SectorSize }

// ClusterSize returns the cluster size in bytes.
func (d *Descriptor) ClusterSize() int64 { return int64(d.Storage[0].Blocksize) * SectorSize }

// SetSize records a new virtual size.
func (d *Descriptor) SetSize(size int64) {
	d.Params.DiskSize = uint64(size / SectorSize)
	d.Params.Cylinders = uint32(d.Params.DiskSize / uint64(max(1, d.Params.Heads*d.Params.Sectors)))
	d.Storage[0].End = d.Params.DiskSize
}

func (d *Descriptor) image(guid string) (DescImage, bool) {
	for _, img := range d.Storage[0].Images {
		if strings.EqualFold(img.GUID, guid) {
			return img, true
		}
	}
	return DescImage{}, false
}

// ValidGUID reports whether s is a GUID in ploop's braced form.
func ValidGUID(s string) bool { return guidPattern.MatchString(s) }

// Parent returns the GUID of the snapshot below guid (ZeroGUID at the bottom).
func (d *Descriptor) Parent(guid string) (string, bool) { return d.parent(guid) }

func (d *Descriptor) parent(guid string) (string, bool) {
	for _, s := range d.Snapshots.Shots {
		if strings.EqualFold(s.GUID, guid) {
			return s.ParentGUID, true
		}
	}
	return "", false
}

// Chain returns the images from the bottom delta up to the top.
func (d *Descriptor) Chain() ([]DescImage, error) {
	var chain []DescImage
	for guid := d.Snapshots.TopGUID; !strings.EqualFold(guid, ZeroGUID); {
		if len(chain) >= maxChainDepth {
			return nil, fmt.Errorf("%w: descriptor: snapshot chain deeper than %d (a loop?)", ErrCorrupt, maxChainDepth)
		}
		img, ok := d.image(guid)
		if !ok {
			return nil, fmt.Errorf("%w: descriptor: no image for snapshot %s", ErrCorrupt, guid)
		}
		parent, ok := d.parent(guid)
		if !ok {
			return nil, fmt.Errorf("%w: descriptor: no <Shot> for image %s", ErrCorrupt, guid)
		}
		chain = append(chain, img)
		guid = parent
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, nil
}

// ChainFiles returns the delta files of the chain, bottom..top, as paths
// (relative names are taken from dir).
func (d *Descriptor) ChainFiles(dir string) ([]string, error) {
	chain, err := d.Chain()
	if err != nil {
		return nil, err
	}
	files := make([]string, len(chain))
	for i, img := range chain {
		files[i] = resolve(dir, img.File)
	}
	return files, nil
}

// withNewTop returns a copy of the descriptor with a new top delta above
// the current one (the file from opts, or "root.hds.{GUID}"), and that file.
// A chain at the depth limit gets ErrChainTooDeep: a deeper one would be
// written but could never be read back.
func (d *Descriptor) withNewTop(opts SnapshotOptions) (*Descriptor, string, error) {
	if chain, err := d.Chain(); err != nil {
		return nil, "", err
	} else if len(chain) >= maxChainDepth {
		return nil, "", fmt.Errorf("%w: the chain is %d deltas deep; merge snapshots away first", ErrChainTooDeep, len(chain))
	}
	guid := NewGUID()
	file := opts.NewDeltaFile
	if file == "" {
		file = RootDeltaFile + "." + guid
	}
	next := *d
	next.Storage = []Storage{d.Storage[0]}
	next.Storage[0].Images = append([]DescImage(nil), d.Storage[0].Images...)
	next.Snapshots.Shots = append([]Shot(nil), d.Snapshots.Shots...)
	next.AddTop(guid, file)
	return &next, file, nil
}

// AddTop records a new top delta above the current one.
func (d *Descriptor) AddTop(guid, file string) {
	d.Storage[0].Images = append(d.Storage[0].Images, DescImage{GUID: guid, Type: imageTypeExpanded, File: file})
	d.Snapshots.Shots = append(d.Snapshots.Shots, Shot{GUID: guid, ParentGUID: d.Snapshots.TopGUID})
	d.Snapshots.TopGUID = guid
}

// DecodeDescriptor parses and validates DiskDescriptor.xml content.
func DecodeDescriptor(b []byte) (*Descriptor, error) {
	if len(b) > maxDescriptorBytes {
		return nil, fmt.Errorf("%w: descriptor is %d bytes, larger than %d", ErrCorrupt, len(b), maxDescriptorBytes)
	}
	d := &Descriptor{}
	dec := xml.NewDecoder(bytes.NewReader(b))
	dec.CharsetReader = func(label string, r io.Reader) (io.Reader, error) {
		if strings.EqualFold(label, "utf-8") || strings.EqualFold(label, "us-ascii") {
			return r, nil
		}
		return nil, fmt.Errorf("unsupported charset %q", label)
	}
	if err := dec.Decode(d); err != nil {
		return nil, fmt.Errorf("%w: descriptor: %w", ErrCorrupt, err)
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Descriptor) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: descriptor: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	if len(d.Storage) != 1 {
		return bad("%d <Storage> elements, want 1", len(d.Storage))
	}
	if d.Params.DiskSize > MaxSize/SectorSize || d.Storage[0].Blocksize > MaxClusterSize/SectorSize {
		return bad("disk size %d sectors or cluster size %d sectors out of range", d.Params.DiskSize, d.Storage[0].Blocksize)
	}
	if err := validateGeometry(d.Size(), d.ClusterSize()); err != nil {
		return bad("%v", err)
	}
	for _, img := range d.Storage[0].Images {
		if !guidPattern.MatchString(img.GUID) {
			return bad("image GUID %q is not a {8-4-4-4-12} GUID", img.GUID)
		}
		if img.File == "" || strings.ContainsRune(img.File, 0) {
			return bad("image %s has no usable <File>", img.GUID)
		}
		if img.Type != imageTypeExpanded {
			return bad("image %s has type %q; only %q (expanded) images are supported", img.GUID, img.Type, imageTypeExpanded)
		}
	}
	for _, s := range d.Snapshots.Shots {
		if !guidPattern.MatchString(s.GUID) || !guidPattern.MatchString(s.ParentGUID) {
			return bad("snapshot GUIDs %q/%q malformed", s.GUID, s.ParentGUID)
		}
	}
	if !guidPattern.MatchString(d.Snapshots.TopGUID) {
		return bad("TopGUID %q malformed", d.Snapshots.TopGUID)
	}
	chain, err := d.Chain()
	if err == nil && len(chain) == 0 {
		return bad("TopGUID is the zero GUID: the image has no delta")
	}
	return err
}

// Encode returns the XML form.
func (d *Descriptor) Encode() ([]byte, error) {
	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append([]byte("<?xml version='1.0' encoding='UTF-8'?>\n"), append(out, '\n')...), nil
}

// ReadDescriptor reads dir/DiskDescriptor.xml from the real file system.
func ReadDescriptor(dir string) (*Descriptor, error) {
	return readDescriptor(NewOSFS(false), dir)
}

func readDescriptor(fsys FS, dir string) (*Descriptor, error) {
	path := filepath.Join(dir, DescriptorFile)
	f, err := fsys.Open(path, false)
	if err != nil {
		return nil, fmt.Errorf("read descriptor: %w", err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	if size > maxDescriptorBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes", ErrCorrupt, path, size)
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	d, err := DecodeDescriptor(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// Write stores the descriptor in dir atomically on the real file system.
func (d *Descriptor) Write(dir string) error { return d.write(NewOSFS(false), dir) }

// write replaces dir/DiskDescriptor.xml atomically: temp file, fsync,
// rename, fsync of the directory. Readers see the old or the new one whole.
func (d *Descriptor) write(fsys FS, dir string) error {
	b, err := d.Encode()
	if err != nil {
		return err
	}
	return durable.WriteFile(durableFS{fsys}, filepath.Join(dir, DescriptorFile), b)
}
