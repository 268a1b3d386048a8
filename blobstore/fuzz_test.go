package blobstore

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// FuzzDecodeRecord feeds the metadata record parser arbitrary bytes: it
// must not panic, and whatever it accepts must survive a round trip.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []record{
		{},
		{State: dtfc.State{Deleted: true, Clock: 1 << 40, Node: "n"}, Seq: 7},
		{State: dtfc.State{Clock: 12345, Node: "0123456789abcdef", Size: 1 << 33, ContentType: "text/plain; charset=utf-8", Filename: "résumé.pdf"}, Seq: 1 << 50},
	} {
		f.Add(r.encode())
	}
	f.Add([]byte{})
	f.Add([]byte{recordVersion})
	f.Add([]byte{recordVersion, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Add([]byte{recordVersion, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		id := dtfc.Sum(b)
		r, err := decodeRecord(id[:], b)
		if err != nil {
			return
		}
		assert.Equal(t, id, r.ID)
		r2, err := decodeRecord(id[:], r.encode())
		require.NoError(t, err)
		assert.Equal(t, r, r2)
	})
}

// FuzzRecordRoundTrip checks that every record encodes and decodes to
// itself.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add(false, uint64(1), uint64(0), int64(0), "node", "", "")
	f.Add(true, uint64(1<<63), uint64(1<<63), int64(-1), "", "a/b", "x\x00y")
	f.Fuzz(func(t *testing.T, deleted bool, clock, seq uint64, size int64, node, ct, fn string) {
		r := record{
			State: dtfc.State{
				ID: dtfc.Sum([]byte(node + ct + fn)), Deleted: deleted, Clock: dtfc.Timestamp(clock),
				Node: node, Size: size, ContentType: ct, Filename: fn,
			},
			Seq: seq,
		}
		got, err := decodeRecord(r.ID[:], r.encode())
		require.NoError(t, err)
		assert.Equal(t, r, got)
		// Truncated records are rejected, never misread.
		enc := r.encode()
		for i := range len(enc) {
			if _, err := decodeRecord(r.ID[:], enc[:i]); err == nil {
				t.Fatalf("a record truncated to %d of %d bytes decoded", i, len(enc))
			}
		}
	})
}

// fuzzReader returns data in chunks whose sizes cycle through sizes (a 0
// is an empty read), then io.EOF. Chunks are at least 1/64 of the data, so
// an input costs a bounded number of reads.
type fuzzReader struct {
	data    []byte
	sizes   []byte
	least   int
	i       int
	empties int
}

func newFuzzReader(data, sizes []byte) *fuzzReader {
	return &fuzzReader{data: data, sizes: sizes, least: max(1, len(data)/64)}
}

func (r *fuzzReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := len(p)
	if len(r.sizes) > 0 {
		b := int(r.sizes[r.i%len(r.sizes)])
		r.i++
		if k = b << (b % 11); k > 0 {
			k = max(k, r.least)
		}
	}
	if k == 0 {
		// A few empty reads, never an endless run of them.
		if r.empties++; r.empties > 2 {
			k, r.empties = 1, 0
		}
	}
	n := copy(p[:min(k, len(p))], r.data)
	r.data = r.data[n:]
	return n, nil
}

// FuzzWriter streams bytes through Writer.ReadFrom in arbitrary chunks
// under an arbitrary size limit: the result is the bytes' SHA-512 and a
// complete file, or ErrTooLarge and nothing.
func FuzzWriter(f *testing.F) {
	s, err := Open(f.TempDir(), Options{})
	require.NoError(f, err)
	f.Cleanup(func() { assert.NoError(f, s.Close()) })
	f.Add([]byte("hello"), []byte{1}, int64(0))
	f.Add([]byte("hello"), []byte{0, 2}, int64(4))
	f.Add(bytes.Repeat([]byte("abcdefg"), 60<<10), []byte{255, 3, 0, 200}, int64(0))
	f.Add(bytes.Repeat([]byte{7}, 300<<10), []byte{128}, int64(300<<10))
	f.Add(bytes.Repeat([]byte{7}, 300<<10), []byte{128}, int64(300<<10-1))
	f.Fuzz(func(t *testing.T, data, sizes []byte, maxBytes int64) {
		w, err := s.NewWriter(WriterOptions{MaxBytes: maxBytes})
		require.NoError(t, err)
		defer func() {
			assert.NoError(t, w.Close())
			entries, err := os.ReadDir(filepath.Join(s.Dir(), "tmp"))
			require.NoError(t, err)
			assert.Empty(t, entries)
		}()
		n, err := w.ReadFrom(newFuzzReader(data, sizes))
		if maxBytes > 0 && int64(len(data)) > maxBytes {
			assert.ErrorIs(t, err, ErrTooLarge)
			_, err = w.Commit(Upload{})
			assert.ErrorIs(t, err, ErrTooLarge)
			return
		}
		require.NoError(t, err)
		assert.Equal(t, int64(len(data)), n)
		res, err := w.Commit(Upload{Expected: dtfc.Sum(data)})
		require.NoError(t, err)
		assert.Equal(t, int64(len(data)), res.State.Size)
		got, err := os.ReadFile(s.Path(dtfc.Sum(data)))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(data, got), "the blob file holds the bytes")
	})
}
