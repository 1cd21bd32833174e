#!/usr/bin/env bash
# make e2e: build (cached), bring up a single-node Kubernetes, deploy csi-ploop
# from deploy/kubernetes through test/e2e/overlay, run the kubectl user story,
# the data-plane checks (a pod writing through a restart of the node plugin
# and a rolling update of the data plane) and the Kubernetes storage e2e
# suite, and tear everything down - also when a step fails or the run is
# interrupted.
# Environment: E2E_SKIP_SUITE=1 (story only), E2E_KEEP=1 (leave the cluster up;
# tear down later with test/e2e/cluster.sh down), E2E_PROCS (suite parallelism).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) == 0 ]] || die "needs root (containerd, kubelet, loop devices, mounts)"
for tool in etcd containerd ctr runc umoci openssl busybox python3; do
	command -v "$tool" >/dev/null || die "$tool missing; see README.md, End-to-end on a real cluster"
done
[[ -x /usr/lib/cni/bridge ]] || die "CNI plugins missing: apt-get install containernetworking-plugins"

T_START=$SECONDS
times=()
stage() { # NAME CMD...: run a stage and remember how long it took.
	local name=$1 t0=$SECONDS
	shift
	log "=== $name"
	"$@"
	times+=("$name $((SECONDS - t0))s")
	log "=== $name done in $((SECONDS - t0))s"
}

summary() {
	local rc=$?
	set +e
	if [[ -z ${E2E_KEEP:-} ]]; then
		"$E2E_DIR/cluster.sh" down
	else
		log "E2E_KEEP set: cluster left running (test/e2e/cluster.sh down)"
	fi
	log "stage times: ${times[*]:-none}"
	log "total $((SECONDS - T_START))s, exit $rc (logs: $LOG_DIR)"
	exit "$rc"
}

start_snapshot_controller() {
	local crd
	for crd in "$SNAPSHOT_CLIENT_DIR"/config/crd/snapshot.storage.k8s.io_*.yaml; do
		kc apply -f "$crd" >/dev/null
	done
	# Retried: kubectl wait fails outright on a CRD whose status has no
	# conditions yet ("accessor error: <nil>").
	wait_for 60 "snapshot CRDs established" kc wait --for=condition=Established --timeout=5s \
		crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
		crd/volumesnapshotclasses.snapshot.storage.k8s.io
	# A host process with the admin kubeconfig (the deploy/ manifests leave the
	# snapshot-controller to the cluster); distributed snapshotting because
	# csi-ploop runs its csi-snapshotter per node.
	setsid "$BIN_DIR/snapshot-controller" --kubeconfig="$KUBECONFIG_ADMIN" \
		--enable-distributed-snapshotting --leader-election=false --v=2 \
		>"$LOG_DIR/snapshot-controller.log" 2>&1 </dev/null &
	echo $! >"$STATE_DIR/pids/snapshot-controller"
}

ds_ready() {
	local ready ds
	for ds in csi-ploop-node csi-ploop-dataplane; do
		ready=$(kc -n csi-ploop get daemonset "$ds" -o jsonpath='{.status.numberReady}/{.status.desiredNumberScheduled}')
		[[ $ready == 1/1 ]] || return 1
	done
}

deploy_driver() {
	kc apply -k "$E2E_DIR/overlay"
	wait_for 180 "csi-ploop-node and csi-ploop-dataplane ready" ds_ready || {
		kc -n csi-ploop describe pods >&2
		return 1
	}
	wait_for 120 "csi-ploop registered with the kubelet" driver_registered
	kc -n csi-ploop get pods -o wide
}

mkdir -p "$LOG_DIR"
if [[ -z ${E2E_SKIP_SUITE:-} ]]; then
	stage build "$E2E_DIR/build.sh" all
else
	stage build "$E2E_DIR/build.sh" base
fi
rm -f "$LOG_DIR"/*.log
trap summary EXIT
trap 'exit 130' INT TERM
stage cluster-up "$E2E_DIR/cluster.sh" up
stage snapshot-controller start_snapshot_controller
stage deploy deploy_driver
stage story "$E2E_DIR/story.sh"
stage dataplane "$E2E_DIR/dataplane.sh"
if [[ -z ${E2E_SKIP_SUITE:-} ]]; then
	stage suite "$E2E_DIR/suite.sh"
fi
