package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
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

// stagedRecord is <root>/meta/staged/<volID>.json, written by NodeStage. It makes
// DeleteVolume refuse staged volumes even when the attacher is not reachable.
type stagedRecord struct {
	VolumeID    string `json:"volumeID"`
	StagingPath string `json:"stagingPath"`
	Block       bool   `json:"block"`
	Device      string `json:"device"`
	// FsType and MountFlags of the staging mount, to mount it again after
	// the serving process was lost.
	FsType     string   `json:"fsType,omitempty"`
	MountFlags []string `json:"mountFlags,omitempty"`
	// Targets are where the volume is published: SINGLE_NODE_SINGLE_WRITER
	// refuses a second one, and a recovered volume is bound there again.
	Targets []publishedTarget `json:"targets,omitempty"`
}

// publishedTarget is one NodePublish target with the options it was bound with.
type publishedTarget struct {
	Path    string   `json:"path"`
	Options []string `json:"options"`
}

const tmpMarker = ".tmp-"

// writeJSONAtomic replaces path with v so that a crash leaves either the old or the
// new content, never a torn file: temp file, fsync, rename, fsync dir.
func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	suffix, err := randomHex()
	if err != nil {
		return err
	}
	tmp := path + tmpMarker + suffix[:8]
	if err := writeSynced(tmp, data); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("commit %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// removeDurable deletes path (absent is fine) and fsyncs its directory, so the
// removal of a commit record survives a crash.
func removeDurable(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
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
		if strings.Contains(name, tmpMarker) {
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
