package volume

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/durable"
)

// volumeRecord is <root>/meta/volumes/<id>.json. Its existence is the volume's
// existence: it is written after the image dir is complete and removed before the
// image dir is.
type volumeRecord struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	CapacityBytes int64             `json:"capacityBytes"`
	ClusterSize   int64             `json:"clusterSize"`
	FsType        string            `json:"fsType,omitempty"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	SourceSnapID  string            `json:"sourceSnapshotID,omitempty"`
	SourceVolID   string            `json:"sourceVolumeID,omitempty"`
	CreatedAt     time.Time         `json:"createdAt"`
}

// snapshotRecord is <root>/meta/snapshots/<id>.json. Chain holds pool delta file
// names (not paths) so the root can be moved.
type snapshotRecord struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	SourceVolID   string    `json:"sourceVolumeID"`
	Chain         []string  `json:"chain"`
	FrozenGUID    string    `json:"frozenGUID"`
	CapacityBytes int64     `json:"capacityBytes"`
	ClusterSize   int64     `json:"clusterSize"`
	SizeBytes     int64     `json:"sizeBytes"`
	CreatedAt     time.Time `json:"createdAt"`
}

// stagedRecord is <root>/meta/staged/<volID>.json, written by NodeStage before
// it attaches and removed by NodeUnstage after it detached. It makes DeleteVolume
// refuse staged volumes even when the attacher is not reachable, and lets the
// startup reconcile stage the volume again.
type stagedRecord struct {
	VolumeID    string `json:"volumeID"`
	StagingPath string `json:"stagingPath"`
	Block       bool   `json:"block"`
	// Device is the loop device last staged; informational (the serving
	// process is asked for the current one).
	Device string `json:"device,omitempty"`
	// FsType and MountFlags of the staging mount, to mount it again after
	// the serving process was lost.
	FsType     string   `json:"fsType,omitempty"`
	MountFlags []string `json:"mountFlags,omitempty"`
	// LegacyTargets is how records written before per-target records listed
	// the published targets. Open moves them to published records; they are
	// only read.
	LegacyTargets []publishedTarget `json:"targets,omitempty"`
}

// publishedTarget is <root>/meta/published/<volID>/<sha256(path)[:32]>.json: one
// NodePublish target with the options it was bound with. One file per target, so
// that NodeUnpublish removes a record instead of rewriting a list: teardown never
// needs free space. SINGLE_NODE_SINGLE_WRITER refuses a second target, and a
// recovered volume is bound at every target again.
type publishedTarget struct {
	Path    string   `json:"path"`
	Options []string `json:"options"`
}

// writeJSONAtomic replaces path with v so that a crash leaves either the old or the
// new content, never a torn file (pkg/durable: temp file, fsync, rename, fsync dir).
// Set-up paths only: it needs free space. Teardown removes records (removeDurable).
func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return durable.WriteFile(durable.OS{}, path, data)
}

// removeDurable deletes path (absent is fine) and fsyncs its directory, so the
// removal of a commit record survives a crash. It needs no free space.
func removeDurable(path string) error {
	if _, err := os.Stat(filepath.Dir(path)); isNotExist(err) {
		return nil // neither the directory nor the record exists
	}
	return durable.Remove(durable.OS{}, path)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// listRecords returns the IDs of the committed records in dir whose name matches
// valid, and removes leftover temp files of interrupted writes.
func listRecords(dir string, valid func(string) bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var ids []string
	for _, e := range entries {
		name := e.Name()
		if isTempRecord(name) {
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		id, ok := strings.CutSuffix(name, ".json")
		if ok && valid(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// isTempRecord tells leftovers of interrupted record writes: pkg/durable's
// "<id>.json.tmp" and the ".tmp-<hex>" names of earlier versions.
func isTempRecord(name string) bool {
	return strings.HasSuffix(name, durable.TempSuffix) || strings.Contains(name, ".tmp-")
}
