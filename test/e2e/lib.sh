#!/usr/bin/env bash
# Shared settings for the csi-ploop end-to-end scripts (sourced, not run).
# shellcheck disable=SC2034  # variables are used by the scripts that source this

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)

K8S_VERSION=${K8S_VERSION:-v1.34.12}
K8S_STAGING_VERSION=${K8S_STAGING_VERSION:-v0.34.12}
PROVISIONER_VERSION=v5.3.0
ATTACHER_VERSION=v4.13.0
RESIZER_VERSION=v2.3.0
SNAPSHOTTER_VERSION=v8.7.0

# Builds (binaries, throwaway Go modules, OCI layouts) survive between runs here.
CACHE_DIR=${CSI_PLOOP_E2E_CACHE:-/var/cache/csi-ploop-e2e}
BIN_DIR=$CACHE_DIR/bin
IMG_DIR=$CACHE_DIR/images
SNAPSHOT_CLIENT_DIR=$CACHE_DIR/src/snapshot-client-$SNAPSHOTTER_VERSION
# Everything of one run (certs, etcd data, logs, kubelet root, driver root)
# lives here and is removed by the teardown.
STATE_DIR=/var/lib/csi-ploop-e2e # fixed: overlay/ names these paths
LOG_DIR=${CSI_PLOOP_E2E_LOGS:-/tmp/csi-ploop-e2e-logs}
# The standard kubelet root: the storage suite looks at /var/lib/kubelet/pods
# on the node. Created by cluster.sh up (which refuses a non-empty one) and
# removed by cluster.sh down.
KUBELET_DIR=/var/lib/kubelet
DRIVER_ROOT=$STATE_DIR/driver
CONTAINERD_ROOT=$STATE_DIR/containerd
CONTAINERD_STATE=/run/csi-ploop-e2e/containerd
CONTAINERD_SOCK=$CONTAINERD_STATE/containerd.sock
PKI=$STATE_DIR/pki
KUBECONFIG_ADMIN=$STATE_DIR/admin.kubeconfig
NODE_NAME=${NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
DRIVER_NAME=ploop.csi.dev
IMAGE_TAG=e2e
IMAGE_TAG_NEXT=e2e-next # a second tag of the same csi-ploop build (cluster.sh)
NICE=(nice -n 19)

log() { printf '%s [e2e] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

kc() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# The kubelet lists csi-ploop among the node's CSI drivers.
driver_registered() {
	[[ $(kc get csinode "$NODE_NAME" -o jsonpath='{.spec.drivers[*].name}') == *"$DRIVER_NAME"* ]]
}
# No PersistentVolume of csi-ploop is left.
no_driver_pvs() { [[ -z $(kc get pv -o jsonpath="{.items[?(@.spec.csi.driver=='$DRIVER_NAME')].metadata.name}") ]]; }

# wait_for SECONDS DESCRIPTION CMD...: retry CMD every 2 s until it succeeds.
wait_for() {
	local limit=$1 what=$2 start=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS - start > limit)); then
			log "timed out after ${limit}s waiting for $what"
			return 1
		fi
		sleep 2
	done
}
