package volume

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
)

const (
	volumePrefix   = "vol-"
	snapshotPrefix = "snap-"
	deltaSuffix    = ".hds"
)

// Strict patterns: IDs become path components, so nothing but lowercase hex may pass.
var (
	volumeIDPattern   = regexp.MustCompile(`^vol-[0-9a-f]{32}$`)
	snapshotIDPattern = regexp.MustCompile(`^snap-[0-9a-f]{32}$`)
	deltaNamePattern  = regexp.MustCompile(`^[0-9a-f]{32}\.hds$`)
)

func randomHex() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func newVolumeID() (string, error) {
	h, err := randomHex()
	return volumePrefix + h, err
}

func newSnapshotID() (string, error) {
	h, err := randomHex()
	return snapshotPrefix + h, err
}

func newDeltaName() (string, error) {
	h, err := randomHex()
	return h + deltaSuffix, err
}

// ValidVolumeID reports whether id has the exact shape of a volume ID we generate.
func ValidVolumeID(id string) bool { return volumeIDPattern.MatchString(id) }

// ValidSnapshotID reports whether id has the exact shape of a snapshot ID we generate.
func ValidSnapshotID(id string) bool { return snapshotIDPattern.MatchString(id) }

// checkVolumeID: a malformed ID can never name an existing volume, hence ErrNotFound
// (CSI wants NOT_FOUND, and DeleteVolume treats it as already gone).
func checkVolumeID(id string) error {
	if !ValidVolumeID(id) {
		return fmt.Errorf("volume %q: malformed id: %w", id, ErrNotFound)
	}
	return nil
}

func checkSnapshotID(id string) error {
	if !ValidSnapshotID(id) {
		return fmt.Errorf("snapshot %q: malformed id: %w", id, ErrNotFound)
	}
	return nil
}
