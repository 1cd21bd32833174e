package driver

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// statsDomain is a domain that merges: its counters appear on /metrics.
type statsDomain struct {
	fakeDomain
	stats volume.MergeStats
}

func (s *statsDomain) MergeStats() volume.MergeStats { return s.stats }

func TestMergeMetrics(t *testing.T) {
	dom := &statsDomain{stats: volume.MergeStats{Online: 3, Offline: 2, Failed: 1, Deferred: 4,
		BytesCopied: 5 << 20, Duration: 1500 * time.Millisecond, Pause: 30 * time.Millisecond,
		MaxPause: 20 * time.Millisecond, Pending: 1}}
	d, err := New(Config{NodeID: "n", DriverName: "ploop.csi.dev"}, dom)
	if err != nil {
		t.Fatal(err)
	}
	want := `
# HELP csi_ploop_merge_copied_bytes_total Bytes copied by delta merges.
# TYPE csi_ploop_merge_copied_bytes_total counter
csi_ploop_merge_copied_bytes_total 5.24288e+06
# HELP csi_ploop_merge_pause_max_seconds The longest wait of I/O at an online merge's switch.
# TYPE csi_ploop_merge_pause_max_seconds gauge
csi_ploop_merge_pause_max_seconds 0.02
# HELP csi_ploop_merge_total Delta merges done, by where they ran: online (the serving process of an attached volume) or offline.
# TYPE csi_ploop_merge_total counter
csi_ploop_merge_total{mode="offline"} 2
csi_ploop_merge_total{mode="online"} 3
`
	if err := testutil.GatherAndCompare(d.Metrics().Registry(), strings.NewReader(want),
		"csi_ploop_merge_total", "csi_ploop_merge_copied_bytes_total", "csi_ploop_merge_pause_max_seconds"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(d.Metrics().Registry()); err != nil || n == 0 {
		t.Fatalf("gather: %d, %v", n, err)
	}
	// A domain without merges exports none of them.
	plain, err := New(Config{NodeID: "n", DriverName: "ploop.csi.dev"}, &fakeDomain{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(plain.Metrics().Registry(), "csi_ploop_merge_total"); n != 0 {
		t.Fatalf("%d merge series from a domain that does not merge", n)
	}
}
