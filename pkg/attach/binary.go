package attach

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"
)

// BinaryID identifies the running executable: its Go build ID (which
// changes with any change of source, dependencies or build flags), or,
// when the executable has none, a hash of its content. Keepers compare it
// to decide whether a serving process runs their own binary; a different
// one is handed over to a successor that does (the live upgrade).
//
// It reads /proc/self/exe, which is the running image even when the file
// was replaced on disk since.
func BinaryID() string {
	binaryIDOnce.Do(func() { binaryID = computeBinaryID("/proc/self/exe") })
	return binaryID
}

var (
	binaryIDOnce sync.Once
	binaryID     string
)

func computeBinaryID(path string) string {
	if id, err := goBuildID(path); err == nil && id != "" {
		return "go:" + id
	}
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "unknown"
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:32]
}

// goBuildID reads the Go build ID note (section .note.go.buildid: name
// "Go\0\0", type 4, the ID as description), which -s -w keeps.
func goBuildID(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sec := f.Section(".note.go.buildid")
	if sec == nil {
		return "", fmt.Errorf("no Go build ID note")
	}
	b, err := sec.Data()
	if err != nil {
		return "", err
	}
	if len(b) < 16 {
		return "", fmt.Errorf("short build ID note")
	}
	nameSize := binary.LittleEndian.Uint32(b[0:])
	descSize := binary.LittleEndian.Uint32(b[4:])
	noteType := binary.LittleEndian.Uint32(b[8:])
	descAt := 12 + (nameSize+3)&^3
	if nameSize != 4 || noteType != 4 || string(b[12:16]) != "Go\x00\x00" || uint64(descAt)+uint64(descSize) > uint64(len(b)) {
		return "", fmt.Errorf("not a Go build ID note")
	}
	return string(b[descAt : descAt+descSize]), nil
}
