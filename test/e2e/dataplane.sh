#!/usr/bin/env bash
# The data plane on the running e2e cluster: a pod writes and verifies
# continuously, on an ext4 PVC and on a block PVC (64 KiB O_DIRECT writes
# with fsync, read back O_DIRECT and compared), while
#   (a) the node plugin pod is deleted and comes back: the new driver adopts
#       the attachments, the serving processes stay the same;
#   (c) the supervisor in the data plane pod is killed (-9): the pod's init
#       starts another, which adopts the serving processes;
#   (b) the data plane DaemonSet's image is changed to a second tag of the
#       same build and rolls (maxSurge 1): the new pod takes every volume
#       over by hand-over, then the old pod goes.
# The pod must see no error. Prints the largest gap between two verified
# iterations (the pause the writer saw, in 10 ms steps of /proc/uptime).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=dataplane
BUSYBOX=localhost/busybox:$IMAGE_TAG
SOCKET=/run/csi-ploop/dataplane.sock

step() { log "dataplane: $*"; }

# The writer: every iteration writes a 64 KiB block (numbered) to both
# volumes, reads it back and compares; errors go to /tmp/errors, progress
# (iterations, largest gap in centiseconds) to /tmp/progress.
WRITER='
up() { cut -d" " -f1 /proc/uptime | tr -d .; }
dd if=/dev/urandom of=/tmp/pat bs=65536 count=16 2>/dev/null
dd if=/dev/zero of=/data/f bs=65536 count=64 oflag=direct 2>/dev/null
i=0; maxgap=0; prev=$(up)
while :; do
	slot=$((i % 64))
	dd if=/tmp/pat of=/tmp/blk bs=65536 skip=$((i % 16)) count=1 2>/dev/null
	printf "%08d" $i | dd of=/tmp/blk bs=8 count=1 conv=notrunc 2>/dev/null
	for t in /data/f /dev/xvda; do
		dd if=/tmp/blk of=$t bs=65536 seek=$slot count=1 oflag=direct conv=notrunc,fsync 2>/dev/null || echo "$(up) write $t $i" >>/tmp/errors
		dd if=$t of=/tmp/back bs=65536 skip=$slot count=1 iflag=direct 2>/dev/null || echo "$(up) read $t $i" >>/tmp/errors
		cmp -s /tmp/blk /tmp/back || echo "$(up) verify $t $i" >>/tmp/errors
	done
	now=$(up); gap=$((now - prev)); prev=$now
	[ "$gap" -gt "$maxgap" ] && maxgap=$gap
	i=$((i + 1))
	echo "$i $maxgap" >/tmp/progress.new && mv /tmp/progress.new /tmp/progress
	[ "$i" -eq 1 ] && touch /tmp/ready
done'

start_writer() {
	kc create namespace "$NS"
	kc apply -n "$NS" -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: dp-fs}
spec:
  storageClassName: ploop
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: dp-blk}
spec:
  storageClassName: ploop
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {requests: {storage: 256Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: $BUSYBOX
      imagePullPolicy: Never
      command: [/bin/sh, -c]
      args:
        - |
$(sed 's/^/          /' <<<"$WRITER")
      readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 2}
      volumeMounts: [{name: fs, mountPath: /data}]
      volumeDevices: [{name: blk, devicePath: /dev/xvda}]
  volumes:
    - {name: fs, persistentVolumeClaim: {claimName: dp-fs}}
    - {name: blk, persistentVolumeClaim: {claimName: dp-blk}}
YAML
	kc wait -n "$NS" --for=condition=Ready pod/writer --timeout=240s
}

# progress: "iterations largest-gap" (the writer renames it into place, so a
# read sees a whole line; none before the first iteration: "0 0").
progress() {
	local p
	p=$(kc exec -n "$NS" writer -- cat /tmp/progress 2>/dev/null) || true
	[[ $p =~ ^[0-9]+\ [0-9]+$ ]] || p="0 0"
	echo "$p"
}
iterations() { progress | cut -d' ' -f1; }
writer_errors() { kc exec -n "$NS" writer -- sh -c 'cat /tmp/errors 2>/dev/null || true'; }

# check_writer WHAT: no error so far, and at least 10 more iterations.
check_writer() {
	local what=$1 from to errs
	from=$(iterations)
	wait_for 120 "the writer going on ($what)" writer_passed $((from + 10))
	errs=$(writer_errors)
	if [[ -n $errs ]]; then
		log "dataplane: the writer saw errors ($what):"
		printf '%s\n' "$errs" >&2
		die "the writer pod saw I/O or verify errors"
	fi
	to=$(progress)
	log "dataplane: $what: writer OK, $(cut -d' ' -f1 <<<"$to") iterations, largest gap so far $(( $(cut -d' ' -f2 <<<"$to") * 10 )) ms"
	[[ $(kc get pod -n "$NS" writer -o jsonpath='{.status.containerStatuses[0].restartCount}') == 0 ]] ||
		die "the writer container restarted"
}
writer_passed() { (($(iterations) >= $1)); }

# dataplane_status: the supervisor's status as the data plane pod sees it.
dataplane_status() {
	kc -n csi-ploop exec "$(dataplane_pod)" -c dataplane -- csi-ploop dataplane status --socket "$SOCKET"
}
dataplane_pod() {
	kc -n csi-ploop get pod -l app.kubernetes.io/name=csi-ploop-dataplane \
		-o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' |
		awk '$2 == "" {print $1}' | tail -1
}
# servers: "image-dir pid" of every kept volume, sorted.
servers() {
	dataplane_status | python3 -c 'import json,sys
for v in json.load(sys.stdin)["volumes"]: print(v["dir"], v["pid"], v["state"])' | sort
}
new_supervisor() {
	local st
	st=$(dataplane_status) || return 1
	python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["ready"] and s["pid"] != int(sys.argv[1]) else 1)' "$1" <<<"$st"
}
pods_of() { kc -n csi-ploop get pod -l "app.kubernetes.io/name=$1" -o jsonpath='{.items[*].metadata.name}'; }
only_pod_is_not() { local p; p=$(pods_of "$1"); [[ -n $p && $p != *" "* && $p != "$2" ]] && pod_ready "$p"; }
pod_ready() { [[ $(kc -n csi-ploop get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }

run_dataplane() {
	local t0=$SECONDS before after old
	step "a pod writes and verifies an ext4 PVC and a block PVC"
	start_writer
	check_writer "before"
	before=$(servers)
	[[ $(wc -l <<<"$before") == 2 ]] || die "the data plane keeps $(wc -l <<<"$before") volumes, want 2: $before"
	log "dataplane: serving processes: $(tr '\n' ';' <<<"$before")"

	step "(a) delete the node plugin pod; the DaemonSet brings it back"
	old=$(pods_of csi-ploop-node)
	kc -n csi-ploop delete pod "$old" --wait=true --timeout=180s
	wait_for 240 "a new node plugin pod" only_pod_is_not csi-ploop-node "$old"
	wait_for 120 "csi-ploop registered with the kubelet again" driver_registered
	check_writer "(a) node plugin pod deleted and back"
	after=$(servers)
	[[ $after == "$before" ]] || die "serving processes changed across the node plugin's restart: $before -> $after"
	log "dataplane: (a) the new driver adopted the attachments: same serving processes"

	step "(c) the supervisor dies (kill -9 in the data plane pod); its init starts another, which adopts"
	local sup pod
	pod=$(dataplane_pod)
	sup=$(dataplane_status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
	kc -n csi-ploop exec "$pod" -c dataplane -- sh -c "kill -9 $sup"
	wait_for 120 "a new supervisor" new_supervisor "$sup"
	check_writer "(c) supervisor killed and restarted"
	after=$(servers)
	[[ $after == "$before" ]] || die "serving processes changed across the supervisor's restart: $before -> $after"
	[[ $(kc -n csi-ploop get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}') == 0 ]] ||
		die "the data plane container restarted"
	log "dataplane: (c) the new supervisor adopted the serving processes; the container did not restart"

	step "(b) the data plane's image changes to a second tag of the same build; it rolls"
	old=$(pods_of csi-ploop-dataplane)
	kc -n csi-ploop set image daemonset/csi-ploop-dataplane "dataplane=localhost/csi-ploop:$IMAGE_TAG_NEXT"
	kc -n csi-ploop rollout status daemonset/csi-ploop-dataplane --timeout=300s
	wait_for 180 "the old data plane pod gone" only_pod_is_not csi-ploop-dataplane "$old"
	check_writer "(b) data plane rolled to a new image"
	after=$(servers)
	log "dataplane: serving processes after the rollout: $(tr '\n' ';' <<<"$after")"
	[[ $(wc -l <<<"$after") == 2 && $(grep -c ' serving$' <<<"$after") == 2 ]] || die "after the rollout the data plane keeps: $after"
	[[ -z $(comm -12 <(cut -d' ' -f2 <<<"$before") <(cut -d' ' -f2 <<<"$after")) ]] ||
		die "a volume was not handed over to the new pod: $before -> $after"
	kc -n csi-ploop get pod -l app.kubernetes.io/name=csi-ploop-dataplane -o wide

	step "delete the writer and its volumes"
	local final
	final=$(progress)
	kc delete -n "$NS" pod writer --wait=true --timeout=180s
	kc delete -n "$NS" pvc --all --wait=true --timeout=180s
	wait_for 180 "PVs released" no_driver_pvs
	kc delete namespace "$NS" --timeout=180s
	log "dataplane: PASSED in $((SECONDS - t0))s: $(cut -d' ' -f1 <<<"$final") verified iterations, largest gap $(( $(cut -d' ' -f2 <<<"$final") * 10 )) ms, 0 errors"
}

run_dataplane
