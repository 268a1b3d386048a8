package dtfc

import (
	"crypto/sha512"
	"encoding/hex"
	"strings"
	"testing"
)

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// FuzzParseID checks that ParseID never panics, accepts exactly the
// strings of 128 hex characters (either case), agrees with LooksLikeID and
// UnmarshalText, and round trips through the lower-case form.
func FuzzParseID(f *testing.F) {
	valid := Sum([]byte("seed")).String()
	for _, s := range []string{
		"", "0", valid, strings.ToUpper(valid), valid[:127], valid + "0", valid[:126] + "zz",
		valid[:127] + "g", valid[:127] + "G", " " + valid[:127], valid[:127] + "\x00",
		strings.Repeat("0", 128), strings.Repeat("f", 128), strings.Repeat("F", 128),
		strings.Repeat("é", 64), valid[:64] + strings.Repeat("\xff", 64), "0x" + valid[:126],
		"-" + valid[:127], "+" + valid[:127], valid[:127] + "\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		want := len(s) == IDHexLen && isHex(s)
		if (err == nil) != want {
			t.Fatalf("ParseID(%q): err %v, want accepted=%v", s, err, want)
		}
		if got := LooksLikeID(s); got != want {
			t.Fatalf("LooksLikeID(%q) = %v, want %v", s, got, want)
		}
		var u ID
		if uerr := u.UnmarshalText([]byte(s)); (uerr == nil) != want || u != id {
			t.Fatalf("UnmarshalText(%q) = %v, %v; ParseID gave %v, %v", s, u, uerr, id, err)
		}
		if err != nil {
			if err != ErrMalformedID {
				t.Fatalf("ParseID(%q): error %v is not ErrMalformedID", s, err)
			}
			if !id.IsZero() {
				t.Fatalf("ParseID(%q) failed but returned %s", s, id)
			}
			return
		}
		if got := id.String(); got != strings.ToLower(s) {
			t.Fatalf("ParseID(%q).String() = %q, want the lower-case input", s, got)
		}
		if m, _ := id.MarshalText(); string(m) != strings.ToLower(s) {
			t.Fatalf("MarshalText = %q, want %q", m, strings.ToLower(s))
		}
		back, err := ParseID(id.String())
		if err != nil || back != id {
			t.Fatalf("round trip of %s: %v, %v", id, back, err)
		}
	})
}

// FuzzSum checks that Sum is SHA-512 and its ID parses back.
func FuzzSum(f *testing.F) {
	f.Add([]byte(nil))
	f.Add([]byte("hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id := Sum(b)
		want := sha512.Sum512(b)
		if id.String() != hex.EncodeToString(want[:]) {
			t.Fatalf("Sum(%q) = %s", b, id)
		}
		back, err := ParseID(id.String())
		if err != nil || back != id || id.IsZero() {
			t.Fatalf("Sum(%q): round trip %v, %v", b, back, err)
		}
	})
}
