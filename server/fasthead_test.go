package server

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestBlobHeadLeavesUncleanTypes: a recorded type net/http would clean
// when writing it (a control byte, a byte above ASCII: possible in a
// record from an older build or a peer) is not written by FastHits,
// which leaves the request to net/http; a plain one is, with every
// hole filled.
func TestBlobHeadLeavesUncleanTypes(t *testing.T) {
	bh := newBlobHead()
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	st := dtfc.State{ID: dtfc.Sum([]byte("x")), Size: 1234, ContentType: "text/plain; charset=utf-8"}
	for _, ct := range []string{"text/plain\r\nX-Evil: 1", "text/plain\x01", "text/caf\xc3\xa9", "a/b\x7f"} {
		bad := st
		bad.ContentType = ct
		_, ok := bh.append(nil, bad, now)
		assert.False(t, ok, "%q", ct)
	}

	head, ok := bh.append(nil, st, now)
	require.True(t, ok)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(head))), nil)
	require.NoError(t, err)
	assert.Equal(t, st.ContentType, resp.Header.Get("Content-Type"))
	assert.Equal(t, "1234", resp.Header.Get("Content-Length"))
	assert.Equal(t, `"`+st.ID.String()+`"`, resp.Header.Get("Etag"))
	assert.Equal(t, st.ID.String(), resp.Header.Get("X-Content-Sha512"))
	assert.Equal(t, now.Format(http.TimeFormat), resp.Header.Get("Date"))
	assert.NotContains(t, string(head), "\x01", "no sentinel left")
}
