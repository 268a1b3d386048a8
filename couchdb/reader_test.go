package couchdb

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAttachmentReader reads attachments through every buffer size the
// transport might use: the bytes come out whole when they match the stub,
// and never whole (the last byte held back, an error instead) when they do
// not.
func TestAttachmentReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4099)[:65537]
	served := map[string][]byte{"good": data, "empty": {}, "short": data[:65536], "long": append(append([]byte{}, data...), 'x'),
		"flipped": append(append([]byte{}, data[:1000]...), append([]byte{'#'}, data[1001:]...)...)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := served[r.URL.Path[len("/db/doc/"):]]
		w.Header().Set("Content-Type", "application/octet-stream")
		// Dribble the bytes, so reads end at odd places.
		for len(b) > 0 {
			n := min(len(b), 1+len(b)%7919)
			w.Write(b[:n])
			w.(http.Flusher).Flush()
			b = b[n:]
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL, ClientOptions{HTTPClient: srv.Client()})
	require.NoError(t, err)
	md5of := func(b []byte) string {
		s := md5.Sum(b)
		return "md5-" + base64.StdEncoding.EncodeToString(s[:])
	}
	stubFor := func(b []byte) stub { return stub{Length: int64(len(b)), Digest: md5of(b), Stub: true} }

	for _, tc := range []struct {
		name string
		stub stub
		ok   bool
	}{
		{"good", stubFor(data), true},
		{"empty", stubFor(nil), true},
		{"short", stubFor(data), false},
		{"long", stubFor(data), false},
		{"flipped", stubFor(data), false},
		// Compressed by CouchDB: the digest is not of these bytes, only
		// the length is checked.
		{"flipped", stub{Length: int64(len(data)), Digest: md5of(data), Encoding: "gzip", Stub: true}, true},
	} {
		for _, size := range []int{1, 2, 3, 4096, 32 << 10, 1 << 20} {
			for _, wrap := range []string{"plain", "onebyte", "half"} {
				ar := &attachmentReader{ctx: t.Context(), db: c.DB("db"), doc: "doc", name: tc.name, stub: tc.stub}
				var r io.Reader = ar
				switch wrap {
				case "onebyte":
					r = iotest.OneByteReader(ar)
				case "half":
					r = iotest.HalfReader(ar)
				}
				var out bytes.Buffer
				buf := make([]byte, size)
				var rerr error
				for {
					n, err := r.Read(buf)
					out.Write(buf[:n])
					if err != nil {
						rerr = err
						break
					}
				}
				ar.Close()
				msg := tc.name + " " + wrap
				if tc.ok {
					assert.ErrorIs(t, rerr, io.EOF, msg)
					assert.True(t, bytes.Equal(served[tc.name], out.Bytes()), msg)
				} else {
					var ce *corrupt
					assert.True(t, errors.As(rerr, &ce), "%s: %v", msg, rerr)
					assert.Less(t, out.Len(), len(data), "%s: the whole length was given", msg)
				}
			}
		}
	}

	// Seeks: the length from the end, and back to the start reads again.
	ar := &attachmentReader{ctx: t.Context(), db: c.DB("db"), doc: "doc", name: "good", stub: stubFor(data)}
	pos, err := ar.Seek(0, io.SeekCurrent)
	require.NoError(t, err)
	assert.Zero(t, pos)
	end, err := ar.Seek(0, io.SeekEnd)
	require.NoError(t, err)
	assert.Equal(t, int64(len(data)), end)
	_, err = ar.Seek(0, io.SeekStart)
	require.NoError(t, err)
	half := make([]byte, 1000)
	_, err = io.ReadFull(ar, half)
	require.NoError(t, err)
	_, err = ar.Seek(0, io.SeekStart)
	require.NoError(t, err)
	all, err := io.ReadAll(ar)
	require.NoError(t, err)
	assert.Equal(t, data, all)
	ar.Close()
	_, err = ar.Seek(5, io.SeekStart)
	assert.Error(t, err)
}
