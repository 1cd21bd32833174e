package driver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are per driver, in their own registry, so several drivers (tests) never
// collide on a global default registry.
type Metrics struct {
	reg      *prometheus.Registry
	calls    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics builds the RPC metrics plus the Go and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "csi_ploop_rpc_total", Help: "CSI RPCs handled, by method.",
		}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "csi_ploop_rpc_errors_total", Help: "CSI RPCs that failed, by method and gRPC code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "csi_ploop_rpc_duration_seconds", Help: "CSI RPC latency, by method.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1ms .. ~4min (format, attach)
		}, []string{"method"}),
	}
	m.reg.MustRegister(m.calls, m.errors, m.duration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the gatherer to expose.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) observe(method, code string, d time.Duration) {
	m.calls.WithLabelValues(method).Inc()
	if code != "OK" {
		m.errors.WithLabelValues(method, code).Inc()
	}
	m.duration.WithLabelValues(method).Observe(d.Seconds())
}

// ServeMetrics serves /metrics of g on addr until ctx is done (the cmd wires
// --metrics-address to this).
func ServeMetrics(ctx context.Context, addr string, g prometheus.Gatherer) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server %s: %w", addr, err)
	}
	return nil
}
