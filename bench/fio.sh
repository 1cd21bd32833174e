#!/usr/bin/env bash
# Benchmark an attached ploop image (loop on the FUSE file of pkg/attach)
# against a loop device with direct I/O on a plain raw file on the same
# filesystem, in the same run. fio: libaio, O_DIRECT, 1 GiB working set.
#
# Each repetition makes a fresh image and a fresh sparse raw file, then runs
# every job on the raw loop and on the image, one after the other:
#   first-touch  randwrite 4k qd32 on the fresh devices: every 4k block is
#                written once (random order), so the image allocates every
#                cluster on the way and the raw file fills its holes
#   (then both are filled sequentially: the rest runs on allocated space)
#   seqwrite / seqread 1M qd8, randread / randwrite 4k qd32, randrw 70/30
#                4k qd32, randread 4k qd1 (latency)
#   post-snap    online snapshot of the image, then randwrite 4k qd32 as for
#                first-touch: the first write into each cluster copies up;
#                the raw side repeats its allocated randwrite
# Ratios are image/raw of the medians over the repetitions (for latency
# higher is worse); brackets give the per-repetition range
# (bench/fio-summary.awk, which also summarises merged results of several
# runs). "srv us/IO" is the CPU time of the serving process per I/O
# (user+system).
#
# usage: sudo bench/fio.sh            (from the repository root)
# env:   WORK=/var/tmp/csi-ploop-bench RUNTIME=15 (s per job) REPS=1
#        CLUSTER=1M (image cluster size, 64K..16M) DEPTH16=1 (chain-depth
#        read test) PROFILE=1 (CPU profile of the last serving process)
set -euo pipefail

WORK=${WORK:-/var/tmp/csi-ploop-bench}
RUNTIME=${RUNTIME:-15}
REPS=${REPS:-1}
CLUSTER=${CLUSTER:-1M}
DEPTH16=${DEPTH16:-1}
PROFILE=${PROFILE:-1}
SIZE=1G
IMGSIZE=2G

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for t in fio jq losetup; do
	command -v $t >/dev/null || { echo "install $t" >&2; exit 1; }
done

rm -rf "$WORK"; mkdir -p "$WORK"
BIN=$WORK/csi-ploop
go build -o "$BIN" ./cmd/csi-ploop
IMG=$WORK/img RUN=$WORK/run RAW=$WORK/raw.img
RESULTS=$WORK/results.tsv # rep job side value srv_us_per_io
SERVER= RAWDEV=
: >"$RESULTS"

detach_all() {
	set +e
	[ -n "$RAWDEV" ] && losetup -d "$RAWDEV"
	RAWDEV=
	if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
		"$BIN" image detach --run-dir "$RUN" "$IMG" || kill -TERM "$SERVER"
		wait "$SERVER"
	fi
	SERVER=
	set -e
}
trap detach_all EXIT

# setup REP: a fresh image and raw file, attached.
setup() {
	local rep=$1
	rm -rf "$IMG" "$RAW"
	"$BIN" image create --cluster-size "$CLUSTER" "$IMG" "$IMGSIZE" >/dev/null
	if [ "$PROFILE" = 1 ]; then export CSI_PLOOP_CPUPROFILE=$WORK/serve-$rep.prof; fi
	"$BIN" image attach --run-dir "$RUN" "$IMG" >"$WORK/serve.out" 2>"$WORK/serve.log" &
	SERVER=$!
	unset CSI_PLOOP_CPUPROFILE
	for _ in $(seq 100); do [ -s "$WORK/serve.out" ] && break; sleep 0.1; done
	IMGDEV=$(head -1 "$WORK/serve.out")
	[ -b "$IMGDEV" ] || { echo "attach failed:"; cat "$WORK/serve.log"; exit 1; } >&2
	truncate -s "$IMGSIZE" "$RAW"
	RAWDEV=$(losetup --direct-io=on --sector-size 4096 -f --show "$RAW")
}

# CPU ticks (user+system) of the serving process.
srv_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER/stat"; }

# job REP NAME SIDE METRIC fio-args...: runs fio on SIDE's device and
# records METRIC (bw MiB/s, iops, lat us = mean completion latency).
job() {
	local rep=$1 name=$2 side=$3 metric=$4; shift 4
	local dev=$RAWDEV; [ "$side" = img ] && dev=$IMGDEV
	local out=$WORK/$name-$side-$rep.json t0 t1
	t0=$(srv_ticks)
	fio --name="$name" --filename="$dev" --ioengine=libaio --direct=1 --size="$SIZE" \
		--group_reporting --output-format=json "$@" >"$out"
	t1=$(srv_ticks)
	jq -r --arg rep "$rep" --arg name "$name" --arg side "$side" --arg metric "$metric" \
		--argjson ticks $((t1 - t0)) --argjson hz "$(getconf CLK_TCK)" '
		.jobs[0] as $j | ($j.read.total_ios + $j.write.total_ios) as $ios
		| (if $metric == "bw" then ($j.read.bw + $j.write.bw) / 1024
		   elif $metric == "iops" then $j.read.iops + $j.write.iops
		   else ($j.read.clat_ns.mean + $j.write.clat_ns.mean) / 1000 end) as $v
		| [$rep, $name, $side, $v, (if $ios > 0 then $ticks / $hz * 1e6 / $ios else 0 end)]
		| @tsv' "$out" >>"$RESULTS"
}

# both REP NAME METRIC fio-args...: the raw loop, then the image.
both() {
	local rep=$1 name=$2 metric=$3; shift 3
	echo "  $name" >&2
	job "$rep" "$name" raw "$metric" "$@"
	job "$rep" "$name" img "$metric" "$@"
}

TIMED="--runtime=$RUNTIME --time_based --randrepeat=0 --norandommap"
ONCE="--runtime=$RUNTIME --randrepeat=0" # random map: every block once, then stop

for rep in $(seq 1 "$REPS"); do
	echo "rep $rep/$REPS, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
	setup "$rep"
	both "$rep" firsttouch iops --rw=randwrite --bs=4k --iodepth=32 $ONCE
	for side in raw img; do # the rest of the working set, allocated
		dev=$RAWDEV; [ $side = img ] && dev=$IMGDEV
		fio --name=fill --filename="$dev" --ioengine=libaio --direct=1 --rw=write \
			--bs=1M --iodepth=8 --size=$SIZE --output-format=terse >/dev/null
	done
	both "$rep" seqwrite bw --rw=write --bs=1M --iodepth=8 $TIMED
	both "$rep" seqread bw --rw=read --bs=1M --iodepth=8 $TIMED
	both "$rep" randread iops --rw=randread --bs=4k --iodepth=32 $TIMED
	both "$rep" randwrite iops --rw=randwrite --bs=4k --iodepth=32 $TIMED
	both "$rep" randrw iops --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 $TIMED
	both "$rep" qd1read lat --rw=randread --bs=4k --iodepth=1 $TIMED
	"$BIN" image snapshot --run-dir "$RUN" "$IMG" >/dev/null
	job "$rep" postsnap img iops --rw=randwrite --bs=4k --iodepth=32 $ONCE
	job "$rep" postsnap raw iops --rw=randwrite --bs=4k --iodepth=32 $ONCE
	if [ "$DEPTH16" = 1 ] && [ "$rep" = "$REPS" ]; then
		# 14 more snapshots, each followed by rewriting 1/16 of the working
		# set: reads find their data spread over 16 deltas.
		echo "  depth16" >&2
		for i in $(seq 2 15); do
			"$BIN" image snapshot --run-dir "$RUN" "$IMG" >/dev/null
			fio --name=spread --filename="$IMGDEV" --ioengine=libaio --direct=1 --rw=write --bs=1M \
				--iodepth=8 --offset=$((i * 64))M --size=64M --output-format=terse >/dev/null
		done
		job "$rep" randread16 img iops --rw=randread --bs=4k --iodepth=32 $TIMED
	fi
	detach_all
	echo "  load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

# Table: medians over the repetitions.
echo
echo "fio, libaio, O_DIRECT, $SIZE working set, ${RUNTIME}s per job, $REPS rep(s), cluster $CLUSTER;" \
	"$(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
awk -F'\t' -f "$(dirname "$0")/fio-summary.awk" "$RESULTS"
echo "raw figures: $RESULTS (rep job side value srv_us_per_io)"

if [ "$PROFILE" = 1 ] && [ -s "$WORK/serve-$REPS.prof" ]; then
	echo
	echo "CPU profile of the last serving process: go tool pprof -top $BIN $WORK/serve-$REPS.prof"
	go tool pprof -top -nodecount=30 "$BIN" "$WORK/serve-$REPS.prof" 2>/dev/null | head -40
fi
