#!/usr/bin/env bash
# Single-node Kubernetes for the end-to-end run: openssl certificates, etcd,
# kube-apiserver (127.0.0.1:6443), controller-manager, scheduler, containerd
# (+ runc, a bridge CNI network that is local to this machine), kubelet.
# Usage: cluster.sh up|down. "down" is safe to run any number of times: it
# stops only the processes whose ids "up" recorded, unmounts what lies under
# the state dirs and detaches the loop devices the run created.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PID_DIR=$STATE_DIR/pids
RUN_DIR=/run/csi-ploop-e2e
CNI_BRIDGE=cniploop0
ETCD_PORT=23790

# start NAME CMD...: run CMD in its own session, log to $LOG_DIR/NAME.log.
start() {
	local name=$1
	shift
	setsid "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
	echo $! >"$PID_DIR/$name"
	log "started $name (pid $!)"
}

gen_certs() {
	mkdir -p "$PKI"
	cd "$PKI"
	openssl genrsa -out ca.key 2048 2>/dev/null
	openssl req -x509 -new -key ca.key -days 2 -subj /CN=csi-ploop-e2e-ca -out ca.crt 2>/dev/null
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	local hostip
	hostip=$(hostname -I | awk '{print $1}')
	# cert NAME SUBJECT [SANS]
	cert() {
		local name=$1 subj=$2 sans=${3:-}
		openssl genrsa -out "$name.key" 2048 2>/dev/null
		openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
		{
			echo "basicConstraints=CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=serverAuth,clientAuth"
			[[ -z $sans ]] || echo "subjectAltName=$sans"
		} >"$name.ext"
		openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
			-extfile "$name.ext" -out "$name.crt" 2>/dev/null
	}
	cert apiserver /CN=kube-apiserver \
		"IP:127.0.0.1,IP:10.0.0.1,IP:$hostip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert admin "/O=system:masters/CN=kubernetes-admin"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
	cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "DNS:$NODE_NAME,IP:127.0.0.1,IP:$hostip"
	kubeconfig admin "$KUBECONFIG_ADMIN"
	kubeconfig kubelet "$STATE_DIR/kubelet.kubeconfig"
	cd - >/dev/null
}

# kubeconfig CERTNAME FILE
kubeconfig() {
	cat >"$2" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: e2e
  context: {cluster: e2e, user: $1}
current-context: e2e
KC
}

start_control_plane() {
	start etcd etcd --name e2e --data-dir "$STATE_DIR/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
		--initial-cluster e2e=http://127.0.0.1:23800
	wait_for 60 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"
	start kube-apiserver "$BIN_DIR/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 127.0.0.1 --secure-port 6443 \
		--service-cluster-ip-range 10.0.0.0/24 \
		--client-ca-file "$PKI/ca.crt" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP,Hostname \
		--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--authorization-mode Node,RBAC --allow-privileged=true \
		--enable-admission-plugins NodeRestriction \
		--profiling=false --v=1
	wait_for 120 kube-apiserver kc get --raw /readyz
	start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
		--kubeconfig "$KUBECONFIG_ADMIN" --authentication-kubeconfig "$KUBECONFIG_ADMIN" \
		--authorization-kubeconfig "$KUBECONFIG_ADMIN" \
		--bind-address 127.0.0.1 --leader-elect=false \
		--service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
		--use-service-account-credentials=true \
		--cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
		--service-cluster-ip-range 10.0.0.0/24 --v=1
	start kube-scheduler "$BIN_DIR/kube-scheduler" \
		--kubeconfig "$KUBECONFIG_ADMIN" --authentication-kubeconfig "$KUBECONFIG_ADMIN" \
		--authorization-kubeconfig "$KUBECONFIG_ADMIN" \
		--bind-address 127.0.0.1 --leader-elect=false --v=1
}

start_containerd() {
	mkdir -p "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$STATE_DIR/cni/conf" "$STATE_DIR/cni/ipam"
	# A bridge that only connects the pods of this node with each other: no
	# gateway, no masquerading, no route out of the machine.
	cat >"$STATE_DIR/cni/conf/10-e2e.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "csi-ploop-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": false, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$STATE_DIR/cni/ipam",
              "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
    {"type": "loopback"}
  ]
}
CNI
	cat >"$STATE_DIR/containerd.toml" <<TOML
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_STATE/containerd.sock.ttrpc"
[debug]
  address = "$CONTAINERD_STATE/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:$IMAGE_TAG"
  # No CAP_SYS_RESOURCE on this VM: without it runc fails to start sandboxes.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni/conf"
TOML
	start containerd containerd --config "$STATE_DIR/containerd.toml"
	wait_for 60 containerd ctr -a "$CONTAINERD_SOCK" version
	local img
	for img in "$IMG_DIR"/*.tar; do
		ctr -a "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$img" >/dev/null
	done
	tag_test_images
	ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls -q >&2
}

# The storage suite's pods name upstream test images (pulled if not present);
# these local ones stand in for them: busybox for nginx ("volumes ... exec of
# files" runs a script with /bin/sh), busybox with GNU coreutils for busybox
# and jessie-dnsutils (multiVolume pods: dd oflag=nocache), a
# sleeping busybox for agnhost (hostexec pods).
tag_test_images() {
	local c=(ctr -a "$CONTAINERD_SOCK" -n k8s.io images tag --force)
	"${c[@]}" "localhost/jessie-dnsutils:$IMAGE_TAG" registry.k8s.io/e2e-test-images/busybox:1.37.0-1 >/dev/null
	"${c[@]}" "localhost/jessie-dnsutils:$IMAGE_TAG" registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7 >/dev/null
	"${c[@]}" "localhost/busybox:$IMAGE_TAG" registry.k8s.io/e2e-test-images/nginx:1.14-4 >/dev/null
	"${c[@]}" "localhost/agnhost:$IMAGE_TAG" registry.k8s.io/e2e-test-images/agnhost:2.56 >/dev/null
	"${c[@]}" "localhost/pause:$IMAGE_TAG" registry.k8s.io/pause:3.10.1 >/dev/null
	# A second tag of the same build: the data plane's rolling update
	# (dataplane.sh) changes the DaemonSet's image to it.
	"${c[@]}" "localhost/csi-ploop:$IMAGE_TAG" "localhost/csi-ploop:$IMAGE_TAG_NEXT" >/dev/null
}

start_kubelet() {
	mkdir -p "$KUBELET_DIR" "$KUBELET_DIR/plugins_registry" "$KUBELET_DIR/plugins"
	# Bidirectional mount propagation needs the kubelet root on a shared mount.
	mount --rbind "$KUBELET_DIR" "$KUBELET_DIR"
	mount --make-rshared "$KUBELET_DIR"
	# The apiserver reaches the kubelet (logs, exec) at the node's InternalIP,
	# this machine's own address; the kubelet listens there only.
	local hostip
	hostip=$(hostname -I | awk '{print $1}')
	cat >"$STATE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $hostip
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
resolvConf: /etc/resolv.conf
maxPods: 110
YAML
	start kubelet "$BIN_DIR/kubelet" --config "$STATE_DIR/kubelet.yaml" \
		--kubeconfig "$STATE_DIR/kubelet.kubeconfig" --root-dir "$KUBELET_DIR" \
		--cert-dir "$PKI" --hostname-override "$NODE_NAME" --v=2
	wait_for 180 "node $NODE_NAME Ready" kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
}

up() {
	[[ ! -e $PID_DIR ]] || die "$PID_DIR exists: a run is active or was not torn down (cluster.sh down)"
	if [[ -n $(ls -A "$KUBELET_DIR" 2>/dev/null) ]]; then
		die "$KUBELET_DIR exists and is not empty: another kubelet's? Not touching it"
	fi
	mkdir -p "$STATE_DIR" "$PID_DIR" "$LOG_DIR" "$RUN_DIR"
	touch "$STATE_DIR/owns-kubelet-dir"
	# The data plane's run dir is mounted with Bidirectional propagation
	# (its FUSE mounts reach the host): its host path must be on a shared
	# mount, which this VM's / is not.
	mount --bind "$RUN_DIR" "$RUN_DIR"
	mount --make-rshared "$RUN_DIR"
	losetup -l -n -O NAME >"$STATE_DIR/loops-before" || true
	gen_certs
	start_control_plane
	start_containerd
	start_kubelet
	log "cluster up: KUBECONFIG=$KUBECONFIG_ADMIN"
}

# stop NAME [SIGNAL]: signal the recorded process group and wait up to 20 s.
stop() {
	local name=$1 pid i
	[[ -f $PID_DIR/$name ]] || return 0
	pid=$(<"$PID_DIR/$name")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 40; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.5
		done
		kill -KILL -- "-$pid" 2>/dev/null || true
	fi
	rm -f "$PID_DIR/$name"
}

stop_containers() {
	[[ -S $CONTAINERD_SOCK ]] || return 0
	local c ctr=(ctr -a "$CONTAINERD_SOCK" -n k8s.io)
	for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
		"${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
	done
	sleep 2
	for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
		"${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
	done
	for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
		"${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true
	done
}

# Shims of our containerd outlive it; they carry our socket in their command line.
stop_shims() {
	local pid
	for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true); do
		kill -KILL "$pid" 2>/dev/null || true
	done
}

unmount_all() {
	local m i
	for ((i = 0; i < 3; i++)); do
		# Deepest first.
		mapfile -t mounts < <(awk '{print $5}' /proc/self/mountinfo |
			grep -E "^($STATE_DIR|$RUN_DIR|$KUBELET_DIR)(/|$)" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- | uniq)
		((${#mounts[@]})) || return 0
		for m in "${mounts[@]}"; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
}

# Loop devices of this run: created after "up" (not in loops-before) over a
# file under our dirs, or over the FUSE "disk" file of our driver container's
# run dir (/run/csi-ploop/<id>/mnt/disk as the container saw it). Anything
# else - other engineers' tests on this machine use loop devices too - is left
# alone; a loop over a bare "/disk" (a FUSE mount whose namespace is gone) is
# only reported, since its owner cannot be told.
detach_loops() {
	local dev back
	while read -r dev back; do
		[[ -n $dev ]] || continue
		grep -qxF "$dev" "$STATE_DIR/loops-before" 2>/dev/null && continue
		case $back in
		"$STATE_DIR"/* | "$RUN_DIR"/* | "$KUBELET_DIR"/* | /run/csi-ploop/*/mnt/disk)
			losetup -d "$dev" 2>/dev/null && log "detached $dev ($back)"
			;;
		/disk) log "WARNING: $dev over /disk (a FUSE file whose mount is gone) left attached: owner unknown" ;;
		esac
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
}

# Let the driver release its volumes itself while the cluster still runs:
# delete workload pods and claims (bounded in time; best effort).
release_volumes() {
	[[ -f $PID_DIR/kube-apiserver && -f $PID_DIR/kubelet ]] || return 0
	kc get --raw /readyz >/dev/null 2>&1 || return 0
	local ns
	for ns in $(kc get ns -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
		case $ns in csi-ploop | kube-system | kube-public | kube-node-lease | default) continue ;; esac
		kc delete pods -n "$ns" --all --wait=false --grace-period=1 >/dev/null 2>&1 || true
	done
	kc delete pvc -A --all --wait=false >/dev/null 2>&1 || true
	wait_for 90 "volumes released" no_driver_pvs || true
}

down() {
	log "tearing down"
	release_volumes
	stop kubelet
	stop_containers
	stop containerd
	stop_shims
	local n
	for n in snapshot-controller kube-scheduler kube-controller-manager kube-apiserver etcd; do
		stop "$n"
	done
	unmount_all
	detach_loops
	unmount_all
	ip link del "$CNI_BRIDGE" 2>/dev/null || true
	if [[ -n $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($STATE_DIR|$RUN_DIR|$KUBELET_DIR)(/|$)" || true) ]]; then
		log "WARNING: mounts left under $STATE_DIR or $RUN_DIR; not removing them"
		return 1
	fi
	if [[ -e $STATE_DIR/owns-kubelet-dir ]]; then
		rm -rf "$KUBELET_DIR"
	fi
	rm -rf "$STATE_DIR" "$RUN_DIR"
	log "torn down"
}

case ${1:-} in
up) up ;;
down) down ;;
*) die "usage: $0 up|down" ;;
esac
