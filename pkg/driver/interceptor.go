package driver

import (
	"context"
	"path"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// intercept logs one line per RPC and records metrics. Requests are logged only at
// V(5) and through protosanitizer, which drops every field marked csi_secret.
func (d *Driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo,
	handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	method := path.Base(info.FullMethod)
	logger := klog.FromContext(ctx).WithValues("method", method)
	if id := requestVolumeID(req); id != "" {
		logger = logger.WithValues("volumeID", id)
	}
	if v := logger.V(5); v.Enabled() {
		v.Info("GRPC request", "request", protosanitizer.StripSecrets(req))
	}
	resp, err := handler(klog.NewContext(ctx, logger), req)
	code := status.Code(err)
	elapsed := time.Since(start)
	d.metrics.observe(method, code.String(), elapsed)
	if err != nil {
		logger.Info("GRPC call", "code", code.String(), "duration", elapsed, "error", err.Error())
	} else {
		logger.V(pollVerbosity(method)).Info("GRPC call", "code", code.String(), "duration", elapsed)
	}
	return resp, err
}

// pollVerbosity keeps calls that are polled on a timer (the liveness probe,
// kubelet's capability and stats polls) out of the default log unless they
// fail; everything that changes state logs at V(0).
func pollVerbosity(method string) int {
	switch method {
	case "Probe", "NodeGetCapabilities", "NodeGetVolumeStats", "GetPluginInfo", "GetPluginCapabilities",
		"ControllerGetCapabilities", "GetCapacity":
		return 4
	}
	return 0
}

// requestVolumeID finds the volume (or snapshot) a request is about, for the log key.
func requestVolumeID(req any) string {
	if r, ok := req.(interface{ GetVolumeId() string }); ok && r.GetVolumeId() != "" {
		return r.GetVolumeId()
	}
	if r, ok := req.(interface{ GetSourceVolumeId() string }); ok && r.GetSourceVolumeId() != "" {
		return r.GetSourceVolumeId()
	}
	if r, ok := req.(interface{ GetSnapshotId() string }); ok {
		return r.GetSnapshotId()
	}
	return ""
}
