#!/usr/bin/env bash
# A/B benchmark of pkg/blockmap's FUSE layer: the blockmap of OLD_REV
# (default main: go-fuse) against the working tree (pkg/fuse), each serving
# a preallocated raw file (O_DIRECT, pkg/blockmap/testdata/rawserve) under a
# loop device with direct I/O, and a loop device straight on that raw file
# as the reference. Sides run interleaved (order rotated per repetition: the
# machine is shared), REPS repetitions of RUNTIME seconds per job; the
# summary gives medians, the new/old ratio of the medians with the per-rep
# range, and CPU time per I/O from /proc/stat (user+system+irq+softirq+
# steal of the whole machine during the job, nice excluded: background
# builds run at nice 19).
#
# usage: bench/blockmap-ab.sh            (root, from the repository root)
# env:   WORK=/var/tmp/blockmap-ab RUNTIME=10 REPS=5 SIZE=1G OLD_REV=main
#        GOMAXPROCS=32 (both servers; the serving process's default)
#        JOBS="name:rw:bs:iodepth ..." (default: the four below)
set -euo pipefail

WORK=${WORK:-/var/tmp/blockmap-ab}
RUNTIME=${RUNTIME:-10}
REPS=${REPS:-5}
SIZE=${SIZE:-1G}
OLD_REV=${OLD_REV:-main}
export GOMAXPROCS=${GOMAXPROCS:-32}
SIDES="old new raw"

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for c in fio jq losetup; do command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }; done

rm -rf "$WORK"; mkdir -p "$WORK/old-src"
git archive "$OLD_REV" | tar -x -C "$WORK/old-src"
mkdir -p "$WORK/old-src/pkg/blockmap/testdata/rawserve"
cp pkg/blockmap/testdata/rawserve/main.go "$WORK/old-src/pkg/blockmap/testdata/rawserve/"
(cd "$WORK/old-src" && go build -o "$WORK/rawserve-old" ./pkg/blockmap/testdata/rawserve)
go build -o "$WORK/rawserve-new" ./pkg/blockmap/testdata/rawserve

declare -A DEV PID
cleanup() {
	set +e
	for s in $SIDES; do [ -n "${DEV[$s]:-}" ] && losetup -d "${DEV[$s]}"; done
	for s in old new; do
		if [ -n "${PID[$s]:-}" ]; then
			kill -TERM "${PID[$s]}"; wait "${PID[$s]}"
			echo "$s server: $(tail -1 "$WORK/$s.log")"
		fi
	done
}
trap cleanup EXIT

# One backing file for all sides, so that its placement on disk favours
# none (jobs run one at a time; the data they mix is never checked).
BACKING=$WORK/backing.raw
truncate -s "$SIZE" "$BACKING"
for s in $SIDES; do
	file=$BACKING
	if [ "$s" != raw ]; then
		mkdir -p "$WORK/mnt-$s"
		"$WORK/rawserve-$s" -backing "$BACKING" -mnt "$WORK/mnt-$s" >"$WORK/$s.out" 2>"$WORK/$s.log" &
		PID[$s]=$!
		for _ in $(seq 100); do [ -s "$WORK/$s.out" ] && break; sleep 0.1; done
		file=$(head -1 "$WORK/$s.out")
		[ -f "$file" ] || { echo "$s server failed:"; cat "$WORK/$s.log"; exit 1; } >&2
	fi
	DEV[$s]=$(losetup --direct-io=on --sector-size 4096 -f --show "$file")
done

echo "preallocating $SIZE..."
fio --name=prealloc --filename="${DEV[raw]}" --ioengine=libaio --direct=1 --rw=write \
	--bs=1M --iodepth=8 --size="$SIZE" --output-format=terse >/dev/null

# busy jiffies of the machine: user system irq softirq steal (no nice, idle, iowait)
busy() { awk '/^cpu /{print $2+$4+$7+$8+$9}' /proc/stat; }
HZ=$(getconf CLK_TCK)

JOBS=${JOBS:-"randread:randread:4k:32 randwrite:randwrite:4k:32 seqread:read:1M:8 seqwrite:write:1M:8"}
RUNS=$WORK/runs.tsv
: >"$RUNS"
for rep in $(seq "$REPS"); do
	# rotate the side order each repetition
	order=$(echo $SIDES | tr ' ' '\n' | awk -v r="$rep" '{a[NR]=$0} END{for(i=0;i<NR;i++) print a[(i+r)%NR+1]}')
	for j in $JOBS; do
		IFS=: read -r name rw bs qd <<<"$j"
		for s in $order; do
			out=$WORK/$name-$s-$rep.json
			b0=$(busy)
			fio --name="$name" --filename="${DEV[$s]}" --ioengine=libaio --direct=1 --rw="$rw" \
				--bs="$bs" --iodepth="$qd" --size="$SIZE" --runtime="$RUNTIME" --time_based \
				--randrepeat=0 --norandommap --group_reporting --output-format=json >"$out"
			b1=$(busy)
			jq -r --arg rep "$rep" --arg s "$s" --arg j "$name" --argjson busy $((b1 - b0)) --argjson hz "$HZ" \
				'.jobs[0] | (.read.total_ios + .write.total_ios) as $ios |
				 [$rep, $j, $s, (.read.iops + .write.iops), ((.read.bw + .write.bw) / 1024),
				  ($busy / $hz * 1e6 / $ios)] | @tsv' "$out" >>"$RUNS"
			echo "rep $rep $name $s: $(tail -1 "$RUNS" | cut -f4-6)"
		done
	done
done

median() { sort -g | awk '{v[NR]=$1} END{if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
col() { awk -F'\t' -v j="$1" -v s="$2" -v c="$3" '$2==j && $3==s {print $c}' "$RUNS"; }

{
	printf "GOMAXPROCS=%s RUNTIME=%ss REPS=%s SIZE=%s OLD_REV=%s (%s) new=%s\n" "$GOMAXPROCS" "$RUNTIME" "$REPS" \
		"$SIZE" "$OLD_REV" "$(git rev-parse --short "$OLD_REV")" "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
	printf "%-9s %6s %10s %9s %9s | %9s %15s %9s %9s\n" job side IOPS MiB/s us/IO new/old "(per-rep range)" old/raw new/raw
	for j in $JOBS; do
		name=${j%%:*}
		declare -A M=()
		for s in $SIDES; do
			M[$s]=$(col "$name" "$s" 4 | median)
			printf "%-9s %6s %10.0f %9.1f %9.1f\n" "$name" "$s" "${M[$s]}" "$(col "$name" "$s" 5 | median)" "$(col "$name" "$s" 6 | median)"
		done
		range=$(paste <(col "$name" new 4) <(col "$name" old 4) | awk '{r=$1/$2; if(NR==1||r<lo)lo=r; if(NR==1||r>hi)hi=r} END{printf "%.2f-%.2f", lo, hi}')
		printf "%-9s %6s %10s %9s %9s | %9.2f %15s %9.2f %9.2f\n" "$name" ratio "" "" "" \
			"$(echo "${M[new]} ${M[old]}" | awk '{print $1/$2}')" "($range)" \
			"$(echo "${M[old]} ${M[raw]}" | awk '{print $1/$2}')" "$(echo "${M[new]} ${M[raw]}" | awk '{print $1/$2}')"
	done
} | tee "$WORK/summary.txt"
