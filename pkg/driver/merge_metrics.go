package driver

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// mergeStatser is what a domain offers when it merges deltas
// (*volume.Manager does).
type mergeStatser interface {
	MergeStats() volume.MergeStats
}

// mergeCollector exports the domain's merge counters, read at each scrape.
type mergeCollector struct {
	src                                   mergeStatser
	merges, failed, deferred, bytes, secs *prometheus.Desc
	pauseSecs, maxPause, pending          *prometheus.Desc
}

func newMergeCollector(src mergeStatser) *mergeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("csi_ploop_merge_"+name, help, labels, nil)
	}
	return &mergeCollector{
		src:       src,
		merges:    d("total", "Delta merges done, by where they ran: online (the serving process of an attached volume) or offline.", "mode"),
		failed:    d("failures_total", "Delta merges that failed (retried later)."),
		deferred:  d("deferred_total", "Delta merges put off because a volume or snapshot was busy (retried later)."),
		bytes:     d("copied_bytes_total", "Bytes copied by delta merges."),
		secs:      d("seconds_total", "Time spent merging deltas."),
		pauseSecs: d("pause_seconds_total", "Time I/O waited at the switches of online merges."),
		maxPause:  d("pause_max_seconds", "The longest wait of I/O at an online merge's switch."),
		pending:   d("pending", "Mergeable delta pairs the last pass left (put off, or shared by several volumes)."),
	}
}

func (c *mergeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.merges, c.failed, c.deferred, c.bytes, c.secs, c.pauseSecs, c.maxPause, c.pending} {
		ch <- d
	}
}

func (c *mergeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.MergeStats()
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(c.merges, float64(s.Online), "online")
	counter(c.merges, float64(s.Offline), "offline")
	counter(c.failed, float64(s.Failed))
	counter(c.deferred, float64(s.Deferred))
	counter(c.bytes, float64(s.BytesCopied))
	counter(c.secs, s.Duration.Seconds())
	counter(c.pauseSecs, s.Pause.Seconds())
	gauge(c.maxPause, s.MaxPause.Seconds())
	gauge(c.pending, float64(s.Pending))
}
