#!/usr/bin/env bash
# The user story on the running e2e cluster, with kubectl only:
#   PVC (ext4) -> pod writes data -> VolumeSnapshot -> PVC from the snapshot ->
#   pod verifies; a PVC cloned from the PVC -> pod verifies; deleting a
#   VolumeSnapshot gives its space back (merged online, the pod still
#   running); online expansion of an xfs PVC seen in the pod; a block-mode
#   PVC used by a pod; deleting everything leaves no image, loop device or
#   mount.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=story
BUSYBOX=localhost/busybox:$IMAGE_TAG

step() { log "story: $*"; }

pvc() { # NAME CLASS SIZE [MODE] [DATASOURCE-KIND DATASOURCE-NAME]
	local name=$1 class=$2 size=$3 mode=${4:-Filesystem} kind=${5:-} src=${6:-} ds=""
	if [[ -n $kind ]]; then
		local group='""'
		[[ $kind == VolumeSnapshot ]] && group=snapshot.storage.k8s.io
		ds="  dataSource: {kind: $kind, name: $src, apiGroup: $group}"
	fi
	kc apply -n "$NS" -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $name}
spec:
  storageClassName: $class
  accessModes: [ReadWriteOnce]
  volumeMode: $mode
  resources: {requests: {storage: $size}}
$ds
YAML
}

pod() { # NAME PVC SCRIPT [block]
	local name=$1 claim=$2 script=$3 vol
	if [[ ${4:-} == block ]]; then
		vol="volumeDevices: [{name: v, devicePath: /dev/xvda}]"
	else
		vol="volumeMounts: [{name: v, mountPath: /data}]"
	fi
	kc apply -n "$NS" -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $name}
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
          $script && touch /tmp/ready && exec sleep 100000
      readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 2}
      $vol
  volumes:
    - name: v
      persistentVolumeClaim: {claimName: $claim}
YAML
	kc wait -n "$NS" --for=condition=Ready "pod/$name" --timeout=240s
}

in_pod() { kc exec -n "$NS" "$1" -- /bin/sh -c "$2"; }

volumesnapshot() { # NAME PVC: take a VolumeSnapshot and wait until it is ready
	kc apply -n "$NS" -f - <<YAML
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: $1}
spec:
  volumeSnapshotClassName: ploop
  source: {persistentVolumeClaimName: $2}
YAML
	kc wait -n "$NS" --for=jsonpath='{.status.readyToUse}'=true "volumesnapshot/$1" --timeout=180s
}

# What the node's storage root stores for all delta files (bytes, st_blocks).
root_usage() { du -s -B1 "$DRIVER_ROOT/deltas" | cut -f1; }
delta_count() { find "$DRIVER_ROOT/deltas" -type f | wc -l; }

# A snapshot whose data the pod has overwritten since holds 64 MiB of its
# own; deleting it merges its delta into the volume's top while the pod
# keeps the volume mounted, and the node's storage root shrinks by that.
snapshot_space_returned() {
	in_pod writer 'dd if=/dev/urandom of=/data/big bs=1M count=64 conv=fsync 2>/dev/null'
	volumesnapshot snap2 data
	in_pod writer 'dd if=/dev/urandom of=/data/big bs=1M count=64 conv=notrunc,fsync 2>/dev/null'
	local content before files_before
	content=$(kc get -n "$NS" volumesnapshot snap2 -o jsonpath='{.status.boundVolumeSnapshotContentName}')
	before=$(root_usage) files_before=$(delta_count)
	kc delete -n "$NS" volumesnapshot snap2 --wait=true --timeout=180s
	wait_for 180 "VolumeSnapshotContent $content gone" content_gone "$content"
	# DeleteSnapshot returns once the merge is done; a merge put off (the
	# volume was busy) is retried within seconds.
	wait_for 120 "the snapshot's 64 MiB given back" space_returned "$before" $((48 << 20)) || {
		log "storage root: $before bytes before, $(root_usage) after"
		die "deleting VolumeSnapshot snap2 gave no space back"
	}
	local after
	after=$(root_usage)
	log "story: deleting VolumeSnapshot snap2 gave back $(((before - after) >> 20)) MiB: storage root deltas $((before >> 20)) MiB in $files_before files -> $((after >> 20)) MiB in $(delta_count) files"
	in_pod writer 'cat /data/hello && md5sum -c /data/blob.md5 && test "$(stat -c %s /data/big)" = 67108864'
}
space_returned() { (($1 - $(root_usage) >= $2)); }
content_gone() { ! kc get volumesnapshotcontent "$1"; }

run_story() {
	local t0=$SECONDS
	kc create namespace "$NS"

	step "PVC (ext4) and a pod that writes data"
	pvc data ploop 1Gi
	pod writer data 'echo hello-ploop > /data/hello && dd if=/dev/urandom of=/data/blob bs=1M count=16 2>/dev/null && md5sum /data/blob > /data/blob.md5 && sync'
	in_pod writer 'cat /data/hello; md5sum -c /data/blob.md5; mount | grep " /data "'

	step "VolumeSnapshot of the PVC (pod still writing)"
	volumesnapshot snap data
	in_pod writer 'echo after-snapshot > /data/hello && sync'

	step "PVC from the snapshot; a pod verifies the data"
	pvc restored ploop 1Gi Filesystem VolumeSnapshot snap
	pod reader-restored restored 'grep -qx hello-ploop /data/hello && md5sum -c /data/blob.md5'
	in_pod reader-restored 'cat /data/hello; md5sum -c /data/blob.md5'

	step "PVC cloned from the PVC; a pod verifies the data"
	pvc clone ploop 1Gi Filesystem PersistentVolumeClaim data
	pod reader-clone clone 'grep -qx after-snapshot /data/hello && md5sum -c /data/blob.md5'
	in_pod reader-clone 'cat /data/hello; md5sum -c /data/blob.md5'

	step "deleting a VolumeSnapshot gives its space back (pod still running)"
	snapshot_space_returned

	step "online expansion (xfs) seen inside the pod"
	pvc grow ploop-xfs 1Gi
	pod grower grow 'echo before > /data/f && sync'
	local before after
	before=$(in_pod grower "df -k /data | awk 'NR==2 {print \$2}'")
	kc patch -n "$NS" pvc grow --type merge -p '{"spec":{"resources":{"requests":{"storage":"3Gi"}}}}'
	local start=$SECONDS
	while :; do
		after=$(in_pod grower "df -k /data | awk 'NR==2 {print \$2}'")
		((after > 2 * 1024 * 1024)) && break
		if ((SECONDS - start > 240)); then
			kc describe -n "$NS" pvc grow >&2
			die "pod still sees ${after} KiB after 240s"
		fi
		sleep 3
	done
	log "story: /data in the pod grew from ${before} KiB to ${after} KiB without a restart"
	in_pod grower 'cat /data/f && echo more > /data/g && sync'
	kc get -n "$NS" pvc grow -o jsonpath='{.status.capacity.storage}{"\n"}'

	step "block-mode PVC used by a pod"
	pvc raw ploop 64Mi Block
	pod blockuser raw 'test -b /dev/xvda && dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null && dd if=/tmp/pat of=/dev/xvda bs=1M conv=fsync 2>/dev/null' block
	in_pod blockuser 'dd if=/dev/xvda of=/tmp/back bs=1M count=4 2>/dev/null && cmp /tmp/pat /tmp/back && echo block-ok; blockdev --getsize64 /dev/xvda'

	step "delete everything"
	kc delete -n "$NS" pod --all --wait=true --timeout=180s
	kc delete -n "$NS" volumesnapshot --all --wait=true --timeout=180s
	kc delete -n "$NS" pvc --all --wait=true --timeout=180s
	wait_for 180 "PVs released" no_driver_pvs
	wait_for 120 "VolumeSnapshotContents gone" no_snapcontents
	kc delete namespace "$NS" --timeout=180s
	wait_for 60 "no volume files, loop devices or mounts" leftovers_gone || {
		leftovers_report
		die "leftovers after deleting everything"
	}
	leftovers_report
	log "story: PASSED in $((SECONDS - t0))s"
}

no_snapcontents() { [[ -z $(kc get volumesnapshotcontents -o name) ]]; }

volume_files() { find "$DRIVER_ROOT/volumes" "$DRIVER_ROOT/deltas" "$DRIVER_ROOT/meta" -type f 2>/dev/null || true; }
# CSI staging/publish mounts and FUSE mounts of this cluster only (other
# engineers' tests on this machine have their own).
volume_mounts() {
	findmnt -rn -o TARGET,FSTYPE,SOURCE | awk -v k="$KUBELET_DIR" '
		index($1, k "/") == 1 && $1 ~ /kubernetes.io[~\/]csi/ { print; next }
		$1 ~ /^\/run\/csi-ploop-e2e\// || $1 ~ /^\/var\/lib\/csi-ploop-e2e\// { if ($2 ~ /^fuse/) print }' || true
}
# The serving processes mount FUSE inside the csi-ploop container (its
# /run/csi-ploop has no mount propagation): look there too.
driver_mounts() {
	kc -n csi-ploop exec daemonset/csi-ploop-node -c csi-ploop -- findmnt -rn -o TARGET,FSTYPE,SOURCE |
		awk '$1 ~ /^\/run\/csi-ploop\// || $2 ~ /^fuse($|\.)/ || $1 ~ /kubernetes.io\/csi/' || true
}
# Loop devices created since "up" over our files (host paths, or the driver
# container's /run/csi-ploop/<id>/mnt/disk).
new_loops() {
	losetup -l -n -O NAME,BACK-FILE 2>/dev/null | while read -r dev back; do
		grep -qxF "$dev" "$STATE_DIR/loops-before" 2>/dev/null && continue
		case $back in
		"$STATE_DIR"/* | /run/csi-ploop-e2e/* | "$KUBELET_DIR"/* | /run/csi-ploop/*) echo "$dev $back" ;;
		esac
	done
}
leftovers_gone() { [[ -z $(volume_files) && -z $(volume_mounts) && -z $(driver_mounts) && -z $(new_loops) ]]; }
leftovers_report() {
	log "volume files: $(volume_files | wc -l), csi/fuse mounts: $(volume_mounts | wc -l) on the host, $(driver_mounts | wc -l) in the driver container, new loop devices: $(new_loops | wc -l)"
	volume_files >&2
	volume_mounts >&2
	driver_mounts >&2
	new_loops >&2
}

run_story
