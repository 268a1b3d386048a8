package dtfc

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
)

// IDLen is the length of an ID in bytes (a SHA-512 digest).
const IDLen = sha512.Size

// IDHexLen is the length of an ID written as hex.
const IDHexLen = 2 * IDLen

// ErrMalformedID is returned by ParseID for anything that is not 128 hex
// characters.
var ErrMalformedID = errors.New("malformed ID: want 128 hexadecimal characters (a SHA-512)")

// ID names a blob: the SHA-512 of its bytes. The zero ID names nothing.
type ID [IDLen]byte

// ParseID parses the hex form of an ID. Upper-case hex is accepted and means
// the same ID as its lower-case form.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != IDHexLen {
		return id, ErrMalformedID
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return ID{}, ErrMalformedID
	}
	return id, nil
}

// LooksLikeID reports whether s has the shape of an ID (128 hex characters).
func LooksLikeID(s string) bool {
	if len(s) != IDHexLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// Sum returns the ID of b.
func Sum(b []byte) ID { return ID(sha512.Sum512(b)) }

// String returns the lower-case hex form of the ID.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText implements encoding.TextMarshaler (lower-case hex).
func (id ID) MarshalText() ([]byte, error) {
	b := make([]byte, IDHexLen)
	hex.Encode(b, id[:])
	return b, nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
