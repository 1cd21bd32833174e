package driver

import (
	"cmp"
	"context"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.cfg.DriverName, VendorVersion: cmp.Or(d.cfg.Version, "dev")}, nil
}

func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	service := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	caps := []*csi.PluginCapability{
		service(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: csi.PluginCapability_VolumeExpansion_ONLINE,
		}}},
	}
	if d.controllerEnabled() {
		caps = append(caps, service(csi.PluginCapability_Service_CONTROLLER_SERVICE))
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if err := d.cfg.Probe(ctx); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "not ready: %v", err)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// defaultProbe: the plugin is useless if it cannot write its root or make loop devices.
func defaultProbe(root, loopControl string) func(context.Context) error {
	return func(context.Context) error {
		if root != "" {
			f, err := os.CreateTemp(root, ".probe-")
			if err != nil {
				return fmt.Errorf("storage root not writable: %w", err)
			}
			f.Close()
			os.Remove(f.Name())
		}
		if _, err := os.Stat(loopControl); err != nil {
			return fmt.Errorf("loop devices unavailable: %w", err)
		}
		return nil
	}
}
