package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
)

// healthProbeTimeout bounds one liveness check: a plugin that cannot answer
// Probe within it is reported unhealthy.
const healthProbeTimeout = 5 * time.Second

// HealthHandler answers GET /healthz the way the livenessprobe sidecar would: it
// calls the Identity Probe RPC through conn (the driver's own CSI socket, so a
// wedged gRPC server or a removed socket fails too) and returns 200 "ok" when
// the plugin is ready, 503 with the error otherwise.
func HealthHandler(conn grpc.ClientConnInterface, timeout time.Duration) http.Handler {
	client := csi.NewIdentityClient(conn)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		resp, err := client.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && resp.GetReady() != nil && !resp.GetReady().GetValue() {
			err = errors.New("plugin reports not ready")
		}
		if err != nil {
			klog.V(2).InfoS("Health check failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// ServeHealth serves /healthz on addr, probing the CSI server at endpoint
// ("unix:///path/csi.sock"), until ctx is done.
func ServeHealth(ctx context.Context, addr, endpoint string) error {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("health: CSI client for %s: %w", endpoint, err)
	}
	defer conn.Close()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health: listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", HealthHandler(conn, healthProbeTimeout))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	klog.InfoS("Serving health checks", "address", lis.Addr().String(), "path", "/healthz")
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health server %s: %w", addr, err)
	}
	return nil
}
