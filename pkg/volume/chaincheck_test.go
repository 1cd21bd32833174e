package volume

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDescriptorNamingFilesOutsideTheRootIsCorrupt (issue 9 item 9): a
// volume whose descriptor names a delta outside the storage root (or a
// symlink in the pool) is a corrupt volume, reported before anything
// attaches, snapshots, clones or grows it.
func TestDescriptorNamingFilesOutsideTheRootIsCorrupt(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret.hds")
	mustNil(t, os.WriteFile(outside, []byte("not ours"), 0o600))
	for name, tamper := range map[string]func(e *env, chain []string) []string{
		"absolute path outside": func(_ *env, chain []string) []string { return append(chain, outside) },
		"dot-dot out of the pool": func(e *env, chain []string) []string {
			rel, _ := filepath.Rel(e.m.deltasDir(), outside)
			return append(chain, e.m.deltasDir()+"/"+rel) // not cleaned: deltas/../../x
		},
		"relative path": func(_ *env, chain []string) []string { return append(chain, "x.hds") },
		"symlink in the pool": func(e *env, chain []string) []string {
			link := e.m.deltaPath("0123456789abcdef0123456789abcdef.hds")
			mustNil(t, os.Symlink(outside, link))
			return append(chain, link)
		},
		"missing delta": func(e *env, chain []string) []string {
			return append(chain, e.m.deltaPath("fedcba9876543210fedcba9876543210.hds"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			v := e.create(t, "v", MiB)
			dir := e.m.volDir(v.ID)
			d, err := readDesc(dir)
			mustNil(t, err)
			d.Chain = tamper(e, d.Chain)
			mustNil(t, writeDesc(dir, d))

			staging := filepath.Join(t.TempDir(), "s")
			wantErr(t, e.m.NodeStage(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging}), ErrCorrupt)
			if len(e.att.attached) != 0 {
				t.Fatal("a corrupt volume was attached")
			}
			_, err = e.m.CreateSnapshot(ctx, v.ID, "s")
			wantErr(t, err, ErrCorrupt)
			_, err = e.m.CreateVolume(ctx, CreateVolumeRequest{Name: "clone", SourceVolumeID: v.ID})
			wantErr(t, err, ErrCorrupt)
			_, err = e.m.ExpandVolume(ctx, v.ID, 8*MiB)
			wantErr(t, err, ErrCorrupt)
			if e.store.called("SnapshotDir")+e.store.called("GrowDir") != 0 {
				t.Fatal("the store acted on a corrupt volume")
			}
			if _, err := os.Stat(outside); err != nil {
				t.Fatalf("the file outside the root: %v", err)
			}
			mustNil(t, e.m.DeleteVolume(ctx, v.ID)) // deleting it is how an operator gets rid of it
			if _, err := os.Stat(outside); err != nil {
				t.Fatalf("delete touched the file outside the root: %v", err)
			}
		})
	}
}
