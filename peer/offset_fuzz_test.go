package peer

import (
	"strconv"
	"testing"
)

// FuzzParseOffset: whatever a peer sends as X-Dtfc-Offset or
// X-Dtfc-Resume-From, parsing it never panics, and what it accepts is a
// plain decimal count that formats back to itself (no sign, no spaces,
// leading zeros aside) and is never negative.
func FuzzParseOffset(f *testing.F) {
	for _, s := range []string{"", "0", "5242880", "-5", "+5", " 5", "5e6", "0x10", "99999999999999999999", "9223372036854775807", "007"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseOffset(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("%q parsed as %d", s, n)
		}
		if s == "" {
			if n != 0 {
				t.Fatalf("empty parsed as %d", n)
			}
			return
		}
		back, err := strconv.ParseUint(s, 10, 63)
		if err != nil || int64(back) != n {
			t.Fatalf("%q accepted as %d, but it is not that decimal count", s, n)
		}
		for _, c := range s {
			if c < '0' || c > '9' {
				t.Fatalf("%q accepted with %q in it", s, c)
			}
		}
	})
}
