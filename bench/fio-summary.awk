# Summary table of bench/fio.sh results (rep job side value srv_us_per_io,
# tab-separated): ratios of the medians over the repetitions, with the
# per-repetition range. Also usable on several runs' results.tsv merged
# (renumber the reps): awk -F'\t' -f bench/fio-summary.awk results.tsv
function median(a, n,   i, j, t) {
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{ key = $2 SUBSEP $3; n[key]++; v[key, n[key]] = $4; s[key, n[key]] = $5; byrep[$2, $3, $1] = $4; reps[$1] = 1 }
# medof: the median of col (v: the values, s: srv us/IO) for name and side.
function medof(col, name, side,   k, i, a) { k = name SUBSEP side; for (i = 1; i <= n[k]; i++) a[i] = col[k, i]; return n[k] ? median(a, n[k]) : 0 }
function med(name, side) { return medof(v, name, side) }
# range: the lowest and highest per-repetition ratio of num on nside to den
# on dside.
function range(num, nside, den, dside,   r, lo, hi, x, first) {
	first = 1
	for (r in reps) if (byrep[den, dside, r] > 0 && ((num, nside, r) in byrep)) {
		x = byrep[num, nside, r] / byrep[den, dside, r]
		if (first || x < lo) lo = x; if (first || x > hi) hi = x; first = 0
	}
	return first ? "" : sprintf("%.2f-%.2f", lo, hi)
}
function row(label, name, unit, div,   r, i) {
	r = med(name, "raw"); i = med(name, "img")
	printf "| %-34s | %9.1f %-5s | %9.1f %-5s | %5.2fx (%s) | %6.1f |\n", label, r / div, unit, i / div, unit, (r > 0 ? i / r : 0), range(name, "img", name, "raw"), medof(s, name, "img")
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
	printf "\nimage first-touch / its own allocated rand write: %.2fx (%s)\n", (rw > 0 ? ft / rw : 0), range("firsttouch", "img", "randwrite", "img")
	if (med("randread16", "img") > 0)
		printf "image rand read 4k qd32 at chain depth 16 / depth 1: %.2fx\n", med("randread16", "img") / med("randread", "img")
}
