#!/usr/bin/env bash
# Does serving through the data plane cost I/O speed? The same image is
# attached alternately by a standalone serving process ("image attach") and
# by the data plane's supervisor (a kept server), ROUNDS times interleaved
# (the machine is shared: interleaving spreads the noise over both), and fio
# runs the same jobs on each; prints the medians and the ratio kept/standalone.
#
# usage: bench/dataplane-ab.sh   (as root, from the repository root)
# env:   WORK=/var/tmp/csi-ploop-dp-ab RUNTIME=10 ROUNDS=3 JOBS="randwrite randread"
set -euo pipefail
WORK=${WORK:-/var/tmp/csi-ploop-dp-ab}
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-randwrite randread}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v fio >/dev/null && command -v jq >/dev/null || { echo "needs fio and jq" >&2; exit 1; }

rm -rf "$WORK"; mkdir -p "$WORK"
BIN=$WORK/csi-ploop IMG=$WORK/img RUN=$WORK/run SOCK=$WORK/run/dataplane.sock
go build -o "$BIN" ./cmd/csi-ploop
"$BIN" image create "$IMG" 2G >/dev/null
cleanup() {
	set +e
	"$BIN" image detach --run-dir "$RUN" "$IMG" 2>/dev/null
	"$BIN" dataplane stop --socket "$SOCK" >/dev/null 2>&1
}
trap cleanup EXIT
"$BIN" dataplane start --socket "$SOCK" --run-dir "$RUN" --cgroup "" --log-file "$WORK/dataplane.log" >/dev/null
# attach_image standalone|kept: prints the device.
attach_image() {
	if [ "$1" = kept ]; then
		"$BIN" dataplane attach --socket "$SOCK" "$IMG"
	else
		"$BIN" image attach --foreground=false --run-dir "$RUN" "$IMG" >"$WORK/attach.out" 2>>"$WORK/attach.log" &
		for _ in $(seq 200); do [ -s "$WORK/attach.out" ] && break; sleep 0.05; done
		head -1 "$WORK/attach.out"
		rm -f "$WORK/attach.out"
	fi
}

# iops MODE JOB: attach in MODE (standalone|kept), run JOB, detach; prints IOPS.
iops() {
	local dev rw=$2
	dev=$(attach_image "$1")
	fio --name=ab --filename="$dev" --ioengine=libaio --direct=1 --rw="$rw" --bs=4k --iodepth=32 \
		--size=1G --runtime="$RUNTIME" --time_based --randrepeat=0 --norandommap \
		--output-format=json >"$WORK/fio.json"
	"$BIN" image detach --run-dir "$RUN" "$IMG"
	local kind=write
	[ "$rw" = randread ] && kind=read
	jq -r ".jobs[0].$kind.iops | floor" "$WORK/fio.json"
}
# Fill the working set once so that reads hit allocated clusters.
dev=$(attach_image standalone)
fio --name=fill --filename="$dev" --ioengine=libaio --direct=1 --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null
"$BIN" image detach --run-dir "$RUN" "$IMG"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for job in $JOBS; do
	: >"$WORK/standalone.$job" && : >"$WORK/kept.$job"
	for r in $(seq "$ROUNDS"); do
		for mode in standalone kept; do
			iops "$mode" "$job" >>"$WORK/$mode.$job"
		done
	done
	s=$(median <"$WORK/standalone.$job") k=$(median <"$WORK/kept.$job")
	printf '%-10s standalone %7d IOPS  kept %7d IOPS  ratio %.2f  (runs: %s | %s)\n' "$job" "$s" "$k" \
		"$(echo "$k / $s" | bc -l)" "$(tr '\n' ' ' <"$WORK/standalone.$job")" "$(tr '\n' ' ' <"$WORK/kept.$job")"
done
