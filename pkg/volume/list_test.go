package volume

import (
	"fmt"
	"slices"
	"testing"
)

func TestListVolumesPagination(t *testing.T) {
	e := newEnv(t)
	var want []string
	for i := range 7 {
		want = append(want, e.create(t, fmt.Sprint("v", i), MiB).ID)
	}
	slices.Sort(want)
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		page, next, err := e.m.ListVolumes(ctx, token, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 3 || pages > 3 {
			t.Fatalf("page of %d, %d pages", len(page), pages)
		}
		got = append(got, ids(page, func(v Volume) string { return v.ID })...)
		if next == "" {
			break
		}
		if pages == 0 { // deleting the token's volume must not break the listing
			if err := e.m.DeleteVolume(ctx, next); err != nil {
				t.Fatal(err)
			}
			want = slices.DeleteFunc(want, func(s string) bool { return s == next })
		}
		token = next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	_, _, err := e.m.ListVolumes(ctx, "garbage", 1)
	wantErr(t, err, ErrBadToken)
	all, next, err := e.m.ListVolumes(ctx, "", 0)
	if err != nil || next != "" || len(all) != len(want) {
		t.Fatalf("list all: %d %q %v", len(all), next, err)
	}
}

func TestListSnapshotsFilters(t *testing.T) {
	e := newEnv(t)
	a, b := e.create(t, "a", MiB), e.create(t, "b", MiB)
	sa1, sa2, sb := e.snap(t, a.ID, "a1"), e.snap(t, a.ID, "a2"), e.snap(t, b.ID, "b1")
	check := func(f SnapshotFilter, want ...string) {
		t.Helper()
		got, _, err := e.m.ListSnapshots(ctx, f, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(want)
		if ids := ids(got, func(s Snapshot) string { return s.ID }); !slices.Equal(ids, want) {
			t.Fatalf("filter %+v: %v, want %v", f, ids, want)
		}
	}
	check(SnapshotFilter{}, sa1.ID, sa2.ID, sb.ID)
	check(SnapshotFilter{SourceVolumeID: a.ID}, sa1.ID, sa2.ID)
	check(SnapshotFilter{SnapshotID: sb.ID}, sb.ID)
	check(SnapshotFilter{SnapshotID: sb.ID, SourceVolumeID: a.ID})
	check(SnapshotFilter{SnapshotID: "no-such"})
	page, next, err := e.m.ListSnapshots(ctx, SnapshotFilter{}, "", 2)
	if err != nil || len(page) != 2 || next == "" {
		t.Fatalf("page %d next %q %v", len(page), next, err)
	}
	rest, next2, err := e.m.ListSnapshots(ctx, SnapshotFilter{}, next, 2)
	if err != nil || len(rest) != 1 || next2 != "" {
		t.Fatalf("second page %d next %q %v", len(rest), next2, err)
	}
	_, _, err = e.m.ListSnapshots(ctx, SnapshotFilter{}, "vol-"+hex32, 2)
	wantErr(t, err, ErrBadToken)
}
