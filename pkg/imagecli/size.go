package imagecli

import (
	"fmt"
	"strconv"
	"strings"
)

var unitShift = map[byte]uint{'K': 10, 'M': 20, 'G': 30, 'T': 40}

// ParseSize parses a size in bytes: a whole number, optionally followed by a
// binary unit K, M, G or T (any case), itself optionally followed by "i" or
// "iB": "65536", "64K", "512Mi", "10GiB", "1T". The result must be a positive
// multiple of 512 (the sector size).
func ParseSize(s string) (int64, error) {
	num, shift, err := splitUnit(s)
	if err != nil {
		return 0, err
	}
	if num == "" || strings.Trim(num, "0123456789") != "" {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes, or one with K, M, G or T (e.g. 10G)", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	v := n << shift
	switch {
	case v == 0:
		return 0, fmt.Errorf("invalid size %q: must be greater than zero", s)
	case v%512 != 0:
		return 0, fmt.Errorf("invalid size %q: %d bytes is not a multiple of 512", s, v)
	}
	return v, nil
}

// splitUnit splits "10GiB" into "10" and 30.
func splitUnit(s string) (string, uint, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	hadI := false
	for _, suffix := range []string{"IB", "I"} {
		if strings.HasSuffix(t, suffix) {
			t, hadI = strings.TrimSuffix(t, suffix), true
			break
		}
	}
	if t == "" {
		return "", 0, fmt.Errorf("invalid size %q", s)
	}
	shift, ok := unitShift[t[len(t)-1]]
	if !ok {
		if hadI {
			return "", 0, fmt.Errorf("invalid size %q: \"i\" must follow K, M, G or T", s)
		}
		return t, 0, nil
	}
	return t[:len(t)-1], shift, nil
}

// FormatSize renders bytes in the largest binary unit that fits: "10 GiB",
// "1.5 MiB", "512 B".
func FormatSize(n int64) string {
	units := []string{"TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		shift := uint(40 - 10*i)
		if n >= 1<<shift {
			if n%(1<<shift) == 0 {
				return fmt.Sprintf("%d %s", n>>shift, u)
			}
			return fmt.Sprintf("%.1f %s", float64(n)/float64(int64(1)<<shift), u)
		}
	}
	return fmt.Sprintf("%d B", n)
}
