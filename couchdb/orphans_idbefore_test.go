package couchdb

import (
	"bytes"
	"testing"

	"github.com/dtfc/dtfc"
)

// TestIDBefore: the ID just before another, borrowing across bytes, so
// that a page of GET /_blobs after it starts with that ID.
func TestIDBefore(t *testing.T) {
	for _, tc := range []struct{ last2, want2 [2]byte }{
		{[2]byte{0x12, 0x35}, [2]byte{0x12, 0x34}},
		{[2]byte{0x12, 0x00}, [2]byte{0x11, 0xff}},
		{[2]byte{0x01, 0x00}, [2]byte{0x00, 0xff}},
	} {
		id := dtfc.Sum([]byte("x"))
		id[62], id[63] = tc.last2[0], tc.last2[1]
		want := id
		want[62], want[63] = tc.want2[0], tc.want2[1]
		got := idBefore(id)
		if got != want {
			t.Errorf("idBefore(...%x) = ...%x, want ...%x", tc.last2, got[62:], tc.want2)
		}
		if bytes.Compare(got[:], id[:]) >= 0 {
			t.Errorf("idBefore(%s) does not sort before it", id)
		}
	}
	var one dtfc.ID
	one[63] = 1
	if got := idBefore(one); !got.IsZero() {
		t.Errorf("idBefore(0...01) = %s, want the zero ID (from the start)", got)
	}
}
