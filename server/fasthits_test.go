package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/server"
)

// plainGet is a request FastHits answers, given a blob it holds.
func plainGet(id string, fields ...string) string {
	return "GET /" + id + " HTTP/1.1\r\nHost: dtfc.test\r\nUser-Agent: fasthits-test\r\nAccept: */*\r\n" +
		strings.Join(fields, "") + "\r\n"
}

// rawConn is one connection to a node, written and read by hand.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func (n *node) dialRaw(t testing.TB) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
	return &rawConn{c: c, br: bufio.NewReader(c)}
}

func (rc *rawConn) send(t testing.TB, req string) {
	t.Helper()
	_, err := io.WriteString(rc.c, req)
	require.NoError(t, err)
}

// readRaw reads one answer to a GET as it came: its head, byte for byte,
// and its body (by Content-Length).
func (rc *rawConn) readRaw(t testing.TB) (head string, body []byte) {
	t.Helper()
	var h strings.Builder
	for {
		line, err := rc.br.ReadString('\n')
		require.NoError(t, err, "reading the answer's head after %q", h.String())
		h.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	head = h.String()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(head)), nil)
	require.NoError(t, err)
	n, err := strconv.Atoi(resp.Header.Get("Content-Length"))
	require.NoError(t, err, "head %q", head)
	body = make([]byte, n)
	_, err = io.ReadFull(rc.br, body)
	require.NoError(t, err)
	return head, body
}

// withoutDate is an answer's head without its Date field.
func withoutDate(head string) string {
	var out []string
	for _, l := range strings.SplitAfter(head, "\r\n") {
		if !strings.HasPrefix(l, "Date: ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

// TestFastHitsAnswersAsNetHTTP: a plain GET of a blob held here is
// answered outside net/http with net/http's answer byte for byte (the
// Date aside), for a blob served from memory and one sent from its
// file, of any size; a request with one more field goes to net/http.
func TestFastHitsAnswersAsNetHTTP(t *testing.T) {
	n := startNode(t, server.Config{})
	for _, size := range []int{0, 1 << 10, 16 << 10, 16<<10 + 1, 64 << 10, 128<<10 + 1, 3 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			data := randBytes(uint64(size), size)
			id := decodeUpload(t, n.put(t, "/f.html", data)).SHA512

			before := n.fast.Answered()
			fast := n.dialRaw(t)
			fast.send(t, plainGet(id))
			fastHead, fastBody := fast.readRaw(t)
			require.Equal(t, before+1, n.fast.Answered(), "a plain GET answered outside net/http")

			slow := n.dialRaw(t)
			slow.send(t, plainGet(id, "X-Not-Plain: 1\r\n"))
			slowHead, slowBody := slow.readRaw(t)
			require.Equal(t, before+1, n.fast.Answered(), "a request with another field goes to net/http")

			assert.Equal(t, withoutDate(slowHead), withoutDate(fastHead))
			assert.Contains(t, fastHead, "\r\nDate: ")
			assert.Equal(t, data, fastBody)
			assert.Equal(t, data, slowBody)
		})
	}
}

// TestFastHitsHandsOverMidConnection: a connection whose requests are
// plain hits, then an upload, then a hit again, is answered right all
// along: the first request FastHits does not take hands the connection,
// with what it holds, to net/http. Pipelined hits are each answered.
func TestFastHitsHandsOverMidConnection(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(1, 100<<10)
	id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512
	before := n.fast.Answered()

	rc := n.dialRaw(t)
	rc.send(t, plainGet(id)+plainGet(id)) // pipelined
	for range 2 {
		_, body := rc.readRaw(t)
		assert.Equal(t, data, body)
	}
	require.Equal(t, before+2, n.fast.Answered())

	up := randBytes(2, 5000)
	rc.send(t, fmt.Sprintf("PUT /b.bin HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: %d\r\n\r\n%s", len(up), up))
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: http.MethodPut})
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "%s", b)
	assert.Contains(t, string(b), sum(up))

	rc.send(t, plainGet(id))
	_, body := rc.readRaw(t)
	assert.Equal(t, data, body)
	rc.send(t, plainGet(sum(up)))
	_, body = rc.readRaw(t)
	assert.Equal(t, up, body)
	assert.Equal(t, before+2, n.fast.Answered(), "net/http keeps the connection once handed over")
}

// TestFastHitsLeavesTheRestToNetHTTP: every request that is not a plain
// hit of a blob held here is answered by net/http, as before FastHits:
// its status, and never by FastHits.
func TestFastHitsLeavesTheRestToNetHTTP(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(3, 70<<10)
	id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512
	gone := decodeUpload(t, n.put(t, "/gone.bin", randBytes(4, 10))).SHA512
	requireStatus(t, n.do(t, http.MethodDelete, "/"+gone, nil), http.StatusOK)
	denied := decodeUpload(t, n.put(t, "/denied.bin", randBytes(5, 10))).SHA512
	requireStatus(t, n.do(t, http.MethodPut, "/_deny/"+denied, strings.NewReader(`{"status": 451, "reason": "court order"}`)), http.StatusOK)
	unknown := strings.Repeat("ab", 64)

	for _, tt := range []struct {
		name   string
		req    string
		status int
	}{
		{"deleted", plainGet(gone), http.StatusNotFound},
		{"never stored", plainGet(unknown), http.StatusNotFound},
		{"denied", plainGet(denied), http.StatusUnavailableForLegalReasons},
		{"upper-case ID", plainGet(strings.ToUpper(id)), http.StatusOK},
		{"HEAD", strings.Replace(plainGet(id), "GET", "HEAD", 1), http.StatusOK},
		{"a range", plainGet(id, "Range: bytes=0-9\r\n"), http.StatusPartialContent},
		{"conditional", plainGet(id, `If-None-Match: "`+id+`"`+"\r\n"), http.StatusNotModified},
		{"nopeerload", strings.Replace(plainGet(id), id, id+"/nopeerload", 1), http.StatusOK},
		{"a query", strings.Replace(plainGet(id), id, id+"?nopeerload=1", 1), http.StatusOK},
		{"bare LF", strings.ReplaceAll(plainGet(id), "\r\n", "\n"), http.StatusOK},
		{"no Host", strings.Replace(plainGet(id), "Host: dtfc.test\r\n", "", 1), http.StatusBadRequest},
		{"two Hosts", plainGet(id, "Host: other.test\r\n"), http.StatusBadRequest},
		{"a Host with a space", strings.Replace(plainGet(id), "dtfc.test", "dtfc test", 1), http.StatusBadRequest},
		{"a field folded", plainGet(id, " folded\r\n"), http.StatusOK},
		{"a space before the colon", plainGet(id, "Accept : */*\r\n"), http.StatusBadRequest},
		{"a control byte", strings.Replace(plainGet(id), "fasthits-test", "fast\x01hits", 1), http.StatusBadRequest},
		{"HTTP/1.0", strings.Replace(plainGet(id), "HTTP/1.1", "HTTP/1.0", 1), http.StatusOK},
		{"Connection: close", plainGet(id, "Connection: close\r\n"), http.StatusOK},
		{"a body", plainGet(id, "Content-Length: 0\r\n"), http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := n.fast.Answered()
			rc := n.dialRaw(t)
			rc.send(t, tt.req)
			method := http.MethodGet
			if strings.HasPrefix(tt.req, "HEAD") {
				method = http.MethodHead
			}
			resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tt.status, resp.StatusCode, "%s", b)
			if tt.status == http.StatusOK && method == http.MethodGet {
				assert.Equal(t, data, b)
			}
			assert.Equal(t, before, n.fast.Answered(), "answered outside net/http")
		})
	}

	t.Run("read tokens", func(t *testing.T) {
		n := startNode(t, server.Config{ReadTokens: []string{"reader"}})
		id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512
		rc := n.dialRaw(t)
		rc.send(t, plainGet(id))
		requireError(t, readAnswer(t, rc.c, http.MethodGet), http.StatusUnauthorized)
		assert.Zero(t, n.fast.Answered())
	})
	t.Run("max_header_bytes", func(t *testing.T) {
		n := startNode(t, server.Config{MaxHeaderBytes: 1024})
		id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512
		rc := n.dialRaw(t)
		rc.send(t, strings.Replace(plainGet(id), "fasthits-test", strings.Repeat("u", 900), 1))
		requireError(t, readAnswer(t, rc.c, http.MethodGet), http.StatusRequestHeaderFieldsTooLarge)
		assert.Zero(t, n.fast.Answered())
	})
	t.Run("CORS origins", func(t *testing.T) {
		n := startNode(t, server.Config{CORSOrigins: []string{"https://app.test"}})
		id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512
		rc := n.dialRaw(t)
		rc.send(t, plainGet(id))
		a := readAnswer(t, rc.c, http.MethodGet)
		requireStatus(t, a, http.StatusOK)
		assert.Equal(t, "Origin", a.header.Get("Vary"))
		assert.Zero(t, n.fast.Answered())
	})
}

// TestFastHitsSlowHead: a head that arrives in pieces is answered once
// whole.
func TestFastHitsSlowHead(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(6, 3000)
	id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512
	rc := n.dialRaw(t)
	req := plainGet(id)
	for i := 0; i < len(req); i += 40 {
		rc.send(t, req[i:min(i+40, len(req))])
		time.Sleep(5 * time.Millisecond) // the fault: a slow client
	}
	_, body := rc.readRaw(t)
	assert.Equal(t, data, body)
	assert.EqualValues(t, 1, n.fast.Answered())
}

// TestFastHitsCloseEndsIdleConnections: a head cut in the middle ends
// its connection without an answer; closing the listener (as
// http.Server.Shutdown does) closes the connections waiting for their
// next request, or in the middle of a head.
func TestFastHitsCloseEndsIdleConnections(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(7, 3000)
	id := decodeUpload(t, n.put(t, "/a.bin", data)).SHA512

	cut := n.dialRaw(t)
	cut.send(t, "GET /"+id)
	require.NoError(t, cut.c.(*net.TCPConn).CloseWrite())
	_, err := cut.br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "no answer to a head cut short")

	idle := n.dialRaw(t)
	idle.send(t, plainGet(id))
	idle.readRaw(t)
	half := n.dialRaw(t)
	half.send(t, "GET /"+id)

	require.NoError(t, n.fast.Close())
	for _, rc := range []*rawConn{idle, half} {
		_, err := rc.br.ReadByte()
		assert.Error(t, err, "the connection is closed")
	}
	require.NoError(t, n.fast.Wait(t.Context()))
	assert.EqualValues(t, 1, n.fast.Answered())
}

// TestFastHitsFileNotItsRecordedSize: a blob's file cut short or grown
// on disk is never served, by either path: its bytes cannot hash to its
// name. The store quarantines it at the open, FastHits leaves the
// request to net/http, and a node with no peer answers 404.
func TestFastHitsFileNotItsRecordedSize(t *testing.T) {
	n := startNode(t, server.Config{})
	const size = 200 << 10
	short := decodeUpload(t, n.put(t, "/short.bin", randBytes(41, size))).SHA512
	long := decodeUpload(t, n.put(t, "/long.bin", randBytes(42, size))).SHA512
	require.NoError(t, os.Truncate(n.blobPath(short), size/2))
	f, err := os.OpenFile(n.blobPath(long), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.Write([]byte("trailing bytes"))
	require.NoError(t, err)
	require.NoError(t, f.Close())

	before := n.fast.Answered()
	rc := n.dialRaw(t)
	rc.send(t, plainGet(short)+plainGet(long))
	for range 2 {
		resp, err := http.ReadResponse(rc.br, nil)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	}
	assert.Equal(t, before, n.fast.Answered())
	assert.NoFileExists(t, n.blobPath(short))
	assert.NoFileExists(t, n.blobPath(long))
}
