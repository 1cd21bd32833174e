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
# higher is worse); brackets give the per-repetition range. "srv us/IO" is
# the CPU time of the serving process per I/O (user+system).
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
awk -F'\t' '
function median(a, n,   i, j, t) {
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{ key = $2 SUBSEP $3; n[key]++; v[key, n[key]] = $4; s[key, n[key]] = $5; byrep[$2, $3, $1] = $4; reps[$1] = 1 }
function med(name, side,   k, i, a) { k = name SUBSEP side; for (i = 1; i <= n[k]; i++) a[i] = v[k, i]; return n[k] ? median(a, n[k]) : 0 }
function meds(name, side,  k, i, a) { k = name SUBSEP side; for (i = 1; i <= n[k]; i++) a[i] = s[k, i]; return n[k] ? median(a, n[k]) : 0 }
function range(num, den,   r, lo, hi, x, first) {
	first = 1
	for (r in reps) if (byrep[den, "raw", r] > 0 && ((num, "img", r) in byrep)) {
		x = byrep[num, "img", r] / byrep[den, "raw", r]
		if (first || x < lo) lo = x; if (first || x > hi) hi = x; first = 0
	}
	return first ? "" : sprintf("%.2f-%.2f", lo, hi)
}
function row(label, name, unit, div,   r, i) {
	r = med(name, "raw"); i = med(name, "img")
	printf "| %-34s | %9.1f %-5s | %9.1f %-5s | %5.2fx (%s) | %6.1f |\n", label, r / div, unit, i / div, unit, (r > 0 ? i / r : 0), range(name, name), meds(name, "img")
}
END {
	print "| job                                | loop on raw file | csi-ploop image  | ratio        | srv us/IO |"
	print "|------------------------------------|------------------|------------------|--------------|--------|"
	row("seq write 1M qd8", "seqwrite", "MiB/s", 1)
	row("seq read 1M qd8", "seqread", "MiB/s", 1)
	row("rand read 4k qd32 (allocated)", "randread", "kIOPS", 1000)
	row("rand write 4k qd32 (allocated)", "randwrite", "kIOPS", 1000)
	row("rand rw 70/30 4k qd32 (allocated)", "randrw", "kIOPS", 1000)
	row("first-touch rand write 4k qd32", "firsttouch", "kIOPS", 1000)
	row("rand write 4k qd32 after snapshot", "postsnap", "kIOPS", 1000)
	row("qd1 4k read latency (lower=better)", "qd1read", "us", 1)
	ft = med("firsttouch", "img"); rw = med("randwrite", "img")
	printf "\nimage first-touch / its own allocated rand write: %.2fx (%s)\n", (rw > 0 ? ft / rw : 0), range2()
	if (med("randread16", "img") > 0)
		printf "image rand read 4k qd32 at chain depth 16 / depth 1: %.2fx\n", med("randread16", "img") / med("randread", "img")
}
function range2(   r, lo, hi, x, first) {
	first = 1
	for (r in reps) if (byrep["randwrite", "img", r] > 0) {
		x = byrep["firsttouch", "img", r] / byrep["randwrite", "img", r]
		if (first || x < lo) lo = x; if (first || x > hi) hi = x; first = 0
	}
	return first ? "" : sprintf("%.2f-%.2f", lo, hi)
}' "$RESULTS"
echo "raw figures: $RESULTS (rep job side value srv_us_per_io)"

if [ "$PROFILE" = 1 ] && [ -s "$WORK/serve-$REPS.prof" ]; then
	echo
	echo "CPU profile of the last serving process: go tool pprof -top $BIN $WORK/serve-$REPS.prof"
	go tool pprof -top -nodecount=30 "$BIN" "$WORK/serve-$REPS.prof" 2>/dev/null | head -40
fi
