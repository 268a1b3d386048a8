package blobstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"

	"github.com/dtfc/dtfc"
)

// record is the stored form of a dtfc.State plus local bookkeeping.
type record struct {
	dtfc.State
	// Seq is the change-feed sequence number of the state; 0 means the
	// state is not in the feed (a cache fill, which has nothing to tell
	// other nodes).
	Seq uint64
	// Evicted: a tier's upload record whose bytes left blobs/ for room,
	// once the archive held them (Store.Evict with Options.Tier). The
	// state is unchanged (digests, the feed and peers see the same
	// upload); reads fetch the bytes back, which clears it.
	Evicted bool
}

const recordVersion = 1

// The bits of a record's flags byte.
const (
	flagDeleted = 1 << iota // a tombstone
	flagEvicted             // an upload whose bytes a tier evicted (record.Evicted)
)

var errBadRecord = errors.New("blobstore: corrupt metadata record")

func (r *record) encode() []byte {
	b := make([]byte, 0, 64+len(r.Node)+len(r.ContentType)+len(r.Filename))
	b = append(b, recordVersion)
	var flags byte
	if r.Deleted {
		flags |= flagDeleted
	}
	if r.Evicted {
		flags |= flagEvicted
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Clock))
	b = binary.AppendUvarint(b, r.Seq)
	b = binary.AppendUvarint(b, uint64(r.Size))
	for _, s := range []string{r.Node, r.ContentType, r.Filename} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func decodeRecord(id []byte, b []byte) (record, error) {
	var r record
	if len(id) != dtfc.IDLen || len(b) < 10 || b[0] != recordVersion {
		return r, errBadRecord
	}
	copy(r.ID[:], id)
	r.Deleted = b[1]&flagDeleted != 0
	r.Evicted = b[1]&flagEvicted != 0
	r.Clock = dtfc.Timestamp(binary.BigEndian.Uint64(b[2:10]))
	b = b[10:]
	var n int
	if r.Seq, n = binary.Uvarint(b); n <= 0 {
		return r, errBadRecord
	}
	b = b[n:]
	size, n := binary.Uvarint(b)
	if n <= 0 {
		return r, errBadRecord
	}
	r.Size = int64(size)
	b = b[n:]
	for _, dst := range []*string{&r.Node, &r.ContentType, &r.Filename} {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return r, errBadRecord
		}
		*dst = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	return r, nil
}

// digestOf is a record's contribution to its bucket's digest. Two nodes
// whose buckets hold the same winning states have equal digests; the XOR of
// the contributions is updated in O(1) on every change.
func digestOf(s *dtfc.State) [32]byte {
	var b [dtfc.IDLen + 9 + 64]byte
	buf := append(b[:0], s.ID[:]...)
	if s.Deleted {
		buf = append(buf, 1)
	} else {
		buf = append(buf, 0)
	}
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.Clock))
	buf = append(buf, s.Node...)
	return sha256.Sum256(buf)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
