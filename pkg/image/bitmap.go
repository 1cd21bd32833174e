package image

// bitmap is a fixed-size set of cluster numbers.
type bitmap []uint64

func newBitmap(n int64) bitmap { return make(bitmap, (n+63)/64) }

// testAndSet sets bit i and reports whether it was already set. Bits past the
// end are reported as unset and not stored.
func (b bitmap) testAndSet(i int64) bool {
	if i < 0 || i/64 >= int64(len(b)) {
		return false
	}
	w, bit := i/64, uint64(1)<<(i%64)
	was := b[w]&bit != 0
	b[w] |= bit
	return was
}

func (b bitmap) test(i int64) bool {
	if i < 0 || i/64 >= int64(len(b)) {
		return false
	}
	return b[i/64]&(1<<(i%64)) != 0
}

// unsetRuns calls fn(lo, hi) for each maximal run [lo, hi) of unset bits in
// [first, end), in order.
func (b bitmap) unsetRuns(first, end int64, fn func(lo, hi int64) error) error {
	for i := first; i < end; {
		if b.test(i) {
			i++
			continue
		}
		lo := i
		for i < end && !b.test(i) {
			i++
		}
		if err := fn(lo, i); err != nil {
			return err
		}
	}
	return nil
}
