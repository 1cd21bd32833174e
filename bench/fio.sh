#!/usr/bin/env bash
# Benchmark an attached ploop image (loop on the FUSE file of pkg/attach)
# against a loop device with direct I/O on a plain raw file on the same
# filesystem. fio: libaio, O_DIRECT, 1 GiB working set, RUNTIME s per job.
# The working set is written first so that reads hit allocated clusters.
#
# usage: sudo bench/fio.sh            (from the repository root)
# env:   WORK=/var/tmp/csi-ploop-bench RUNTIME=15 PROFILE=1 (CPU profile of the server)
set -euo pipefail

WORK=${WORK:-/var/tmp/csi-ploop-bench}
RUNTIME=${RUNTIME:-15}
PROFILE=${PROFILE:-1}
SIZE=1G
IMGSIZE=2G

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v fio >/dev/null || { echo "install fio: apt-get install -y fio" >&2; exit 1; }
command -v jq >/dev/null || { echo "install jq" >&2; exit 1; }

rm -rf "$WORK"; mkdir -p "$WORK"
BIN=$WORK/csi-ploop
go build -o "$BIN" ./cmd/csi-ploop
IMG=$WORK/img RUN=$WORK/run RAW=$WORK/raw.img
SERVER= RAWDEV=

cleanup() {
	set +e
	[ -n "$RAWDEV" ] && losetup -d "$RAWDEV"
	if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
		"$BIN" image detach --run-dir "$RUN" "$IMG" || kill -TERM "$SERVER"
		wait "$SERVER"
	fi
}
trap cleanup EXIT

# The image: an empty 2G image directory, attached by a serving process.
go run ./cmd/csi-ploop image create "$IMG" "$IMGSIZE"
if [ "$PROFILE" = 1 ]; then export CSI_PLOOP_CPUPROFILE=$WORK/serve.prof; fi
"$BIN" image attach --run-dir "$RUN" "$IMG" >"$WORK/serve.out" 2>"$WORK/serve.log" &
SERVER=$!
unset CSI_PLOOP_CPUPROFILE
for _ in $(seq 100); do [ -s "$WORK/serve.out" ] && break; sleep 0.1; done
IMGDEV=$(head -1 "$WORK/serve.out")
[ -b "$IMGDEV" ] || { echo "attach failed:"; cat "$WORK/serve.log"; exit 1; } >&2

# The reference: a raw file with a direct-I/O loop device, same block size.
truncate -s "$IMGSIZE" "$RAW"
RAWDEV=$(losetup --direct-io=on --sector-size 4096 -f --show "$RAW")

# fio JOBNAME DEV RW BS QD [extra fio args...] -> JSON file
fio_run() {
	local name=$1 dev=$2 rw=$3 bs=$4 qd=$5; shift 5
	fio --name="$name" --filename="$dev" --ioengine=libaio --direct=1 --rw="$rw" \
		--bs="$bs" --iodepth="$qd" --size="$SIZE" --runtime="$RUNTIME" --time_based \
		--randrepeat=0 --norandommap --group_reporting --output-format=json "$@" \
		>"$WORK/$name.json"
}

# metric JSONFILE read|write -> "MiB/s IOPS p99_us"
metric() {
	jq -r --arg d "$2" '.jobs[0][$d] | "\(.bw/1024) \(.iops) \(.clat_ns.percentile["99.000000"]/1000)"' "$1"
}

echo "preallocating $SIZE on both devices..."
for d in raw:$RAWDEV img:$IMGDEV; do
	fio --name=prealloc-${d%%:*} --filename=${d#*:} --ioengine=libaio --direct=1 --rw=write \
		--bs=1M --iodepth=8 --size=$SIZE --output-format=terse >/dev/null
done

JOBS="seqread:read:1M:8 seqwrite:write:1M:8 randread:randread:4k:32 randwrite:randwrite:4k:32"
for j in $JOBS; do
	IFS=: read -r name rw bs qd <<<"$j"
	for side in raw img; do
		dev=$RAWDEV; [ $side = img ] && dev=$IMGDEV
		echo "fio $name on $side ($dev)..."
		fio_run "$name-$side" "$dev" "$rw" "$bs" "$qd"
	done
done

# Chain depth 16: 15 online snapshots, each followed by rewriting 1/16 of
# the working set, so that reads find their data spread over 16 deltas.
echo "building a 16-delta chain..."
for i in $(seq 1 15); do
	"$BIN" image snapshot --run-dir "$RUN" "$IMG" >/dev/null
	fio --name=spread --filename="$IMGDEV" --ioengine=libaio --direct=1 --rw=write --bs=1M \
		--iodepth=8 --offset=$((i * 64))M --size=64M --output-format=terse >/dev/null
done
echo "fio randread at depth 16..."
fio_run "randread-depth16" "$IMGDEV" randread 4k 32

# Table.
row() { # label unit raw img
	awk -v l="$1" -v u="$2" -v r="$3" -v i="$4" \
		'BEGIN { printf "| %-22s | %10.1f %-6s | %10.1f %-6s | %5.2fx |\n", l, r, u, i, u, (r > 0 ? i / r : 0) }'
}
echo
echo "fio, libaio, O_DIRECT, $SIZE working set, ${RUNTIME}s per job; $(nproc) CPUs, kernel $(uname -r)"
echo "| job                    | loop on raw file  | attached image    | ratio |"
echo "|------------------------|-------------------|-------------------|-------|"
for j in $JOBS; do
	IFS=: read -r name rw bs qd <<<"$j"
	dir=read; case $rw in *write) dir=write ;; esac
	read -r rbw riops rp99 <<<"$(metric "$WORK/$name-raw.json" $dir)"
	read -r ibw iiops ip99 <<<"$(metric "$WORK/$name-img.json" $dir)"
	case $bs in
	1M) row "$name $bs qd$qd" MiB/s "$rbw" "$ibw" ;;
	*) row "$name $bs qd$qd" kIOPS "$(awk -v x="$riops" 'BEGIN{print x/1000}')" "$(awk -v x="$iiops" 'BEGIN{print x/1000}')" ;;
	esac
	row "  p99 latency" us "$rp99" "$ip99"
done
read -r _ d1 d1p99 <<<"$(metric "$WORK/randread-img.json" read)"
read -r _ d16 d16p99 <<<"$(metric "$WORK/randread-depth16.json" read)"
echo
echo "| chain depth (image, randread 4k qd32) | depth 1 | depth 16 | ratio |"
echo "|---------------------------------------|---------|----------|-------|"
awk -v a="$d1" -v b="$d16" 'BEGIN { printf "| kIOPS                                 | %7.1f | %8.1f | %5.2fx |\n", a/1000, b/1000, b/a }'
awk -v a="$d1p99" -v b="$d16p99" 'BEGIN { printf "| p99 latency us                        | %7.0f | %8.0f | %5.2fx |\n", a, b, b/a }'

# Stop the server cleanly (writes the CPU profile), then show it.
"$BIN" image detach --run-dir "$RUN" "$IMG"
wait "$SERVER"; SERVER=
if [ "$PROFILE" = 1 ] && [ -s "$WORK/serve.prof" ]; then
	echo
	echo "CPU profile of the serving process (whole run): go tool pprof -top $BIN $WORK/serve.prof"
	go tool pprof -top -nodecount=30 "$BIN" "$WORK/serve.prof" 2>/dev/null | head -40
fi
