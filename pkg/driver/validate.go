package driver

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/csi-ploop/csi-ploop/pkg/volume"
)

// Parameter keys a StorageClass may set. Keys with the provisioner's prefix (pvc
// name, namespace, pv name, secrets) are accepted and ignored.
const (
	ParamFsType       = "csi.storage.k8s.io/fstype"
	ParamClusterSize  = "clusterSize"
	provisionerPrefix = "csi.storage.k8s.io/"
	TopologyKeyNode   = "topology.ploop.csi.dev/node"
	DefaultFsType     = "ext4"
	volumeContextFs   = "fsType"
)

func fsSupported(fs string) bool { return fs == "ext4" || fs == "xfs" }

// modeSupported: single-node modes only, since a ploop image is served by one
// process on one node.
func modeSupported(m csi.VolumeCapability_AccessMode_Mode) bool {
	switch m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
		return true
	}
	return false
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// checkCapability validates one capability and returns its fsType ("" for block).
func checkCapability(c *csi.VolumeCapability) (string, error) {
	if c == nil {
		return "", invalid("volume capability is required")
	}
	mode := c.GetAccessMode().GetMode()
	if !modeSupported(mode) {
		return "", invalid("access mode %v is not supported (single node only)", mode)
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
		return "", nil
	case *csi.VolumeCapability_Mount:
		fs := t.Mount.GetFsType()
		if fs != "" && !fsSupported(fs) {
			return "", invalid("fsType %q is not supported (ext4, xfs)", fs)
		}
		return fs, nil
	default:
		return "", invalid("volume capability needs an access type (block or mount)")
	}
}

// checkCapabilities validates a list and returns the one fsType its mount
// capabilities agree on ("" if none names one).
func checkCapabilities(caps []*csi.VolumeCapability) (string, error) {
	if len(caps) == 0 {
		return "", invalid("volume capabilities are required")
	}
	fsType := ""
	for _, c := range caps {
		fs, err := checkCapability(c)
		if err != nil {
			return "", err
		}
		if fs != "" && fsType != "" && fs != fsType {
			return "", invalid("capabilities ask for two fsTypes %q and %q", fsType, fs)
		}
		fsType = cmp.Or(fsType, fs)
	}
	return fsType, nil
}

// params is the validated StorageClass parameters.
type params struct {
	FsType      string
	ClusterSize int64 // 0 = default
}

func parseParams(p map[string]string) (params, error) {
	var out params
	for k, v := range p {
		switch {
		case k == ParamFsType:
			if !fsSupported(v) {
				return out, invalid("parameter %s=%q: ext4 or xfs", k, v)
			}
			out.FsType = v
		case k == ParamClusterSize:
			cs, err := parseQuantity(v)
			if err != nil || !volume.ValidClusterSize(cs) {
				return out, invalid("parameter %s=%q: a power of two from 64Ki to 16Mi", k, v)
			}
			out.ClusterSize = cs
		case strings.HasPrefix(k, provisionerPrefix):
			// added by external-provisioner (pvc/pv names, secrets refs): not ours
		default:
			return out, invalid("unknown parameter %q", k)
		}
	}
	return out, nil
}

// parseQuantity parses a Kubernetes quantity ("1Mi", "65536") into bytes.
func parseQuantity(s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w: %w", s, volume.ErrInvalid, err)
	}
	n, exact := q.AsInt64()
	if !exact || n <= 0 {
		return 0, fmt.Errorf("size %q is not a positive whole number of bytes: %w", s, volume.ErrInvalid)
	}
	return n, nil
}

func checkCapacityRange(r *csi.CapacityRange) error {
	if r.GetRequiredBytes() < 0 || r.GetLimitBytes() < 0 {
		return invalid("capacity range must not be negative")
	}
	return nil
}

// topologyAllows reports whether the requirement (if any) admits this node. Both
// requisite and preferred are lists of acceptable segments.
func topologyAllows(req *csi.TopologyRequirement, nodeID string) bool {
	if req == nil || (len(req.GetRequisite()) == 0 && len(req.GetPreferred()) == 0) {
		return true
	}
	for _, list := range [][]*csi.Topology{req.GetRequisite(), req.GetPreferred()} {
		for _, t := range list {
			if t.GetSegments()[TopologyKeyNode] == nodeID {
				return true
			}
		}
	}
	return false
}
