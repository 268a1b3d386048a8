package server_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

// TestLongContentTypeIgnored: a client's Content-Type of 60,000 bytes is
// not recorded (it would be sent with every download); the extension's or
// the sniffed type is, and a long type recorded before the bound is not
// sent on.
func TestLongContentTypeIgnored(t *testing.T) {
	long := "text/html; junk=" + strings.Repeat("x", 60000)
	n := startNode(t, server.Config{})
	html := []byte("<!doctype html><title>x</title><p>hello")
	check := func(t *testing.T, id, want string) {
		t.Helper()
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			a := n.do(t, m, "/"+id, nil)
			requireStatus(t, a, http.StatusOK)
			assert.Equal(t, want, a.header.Get("Content-Type"), m)
		}
	}

	t.Run("PUT, by the extension", func(t *testing.T) {
		data := []byte("not really a png")
		requireStatus(t, n.put(t, "/pic.png", data, "Content-Type", long), http.StatusCreated)
		check(t, sum(data), "image/png")
	})
	t.Run("PUT, sniffed", func(t *testing.T) {
		requireStatus(t, n.put(t, "/page", html, "Content-Type", long), http.StatusCreated)
		check(t, sum(html), "text/html; charset=utf-8")
	})
	t.Run("not a media type", func(t *testing.T) {
		data := []byte("plain words")
		requireStatus(t, n.put(t, "/notes", data, "Content-Type", "no media type"), http.StatusCreated)
		check(t, sum(data), "text/plain; charset=utf-8")
	})
	t.Run("multipart part", func(t *testing.T) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		w, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Disposition": {`form-data; name="file"; filename="photo.jpg"`},
			"Content-Type":        {long},
		})
		require.NoError(t, err)
		data := []byte("\xff\xd8\xff\xe0 jpeg bytes")
		_, err = w.Write(data)
		require.NoError(t, err)
		require.NoError(t, mw.Close())
		requireStatus(t, n.do(t, http.MethodPost, "/", &buf, "Content-Type", mw.FormDataContentType()), http.StatusCreated)
		check(t, sum(data), "image/jpeg")
	})
	t.Run("recorded before the bound", func(t *testing.T) {
		data := []byte("recorded by an older version")
		bw, err := n.store.NewWriter(blobstore.WriterOptions{})
		require.NoError(t, err)
		defer bw.Close()
		_, err = bw.ReadFrom(bytes.NewReader(data))
		require.NoError(t, err)
		res, err := bw.Commit(blobstore.Upload{ContentType: long})
		require.NoError(t, err)
		require.Equal(t, long, res.State.ContentType, "the store keeps what it is given")
		check(t, sum(data), "application/octet-stream")
	})
	t.Run("short types still recorded", func(t *testing.T) {
		data := []byte("x,y")
		ct := fmt.Sprintf("application/vnd.dtfc.%s", strings.Repeat("y", 200))
		requireStatus(t, n.put(t, "/data", data, "Content-Type", ct), http.StatusCreated)
		check(t, sum(data), ct)
	})
}

// lookupCluster answers Lookup with a fixed state, as a peer holding the
// blob would; a HEAD of a local miss needs nothing else. Open reads the
// node's store as peer.Cluster does, and answers a HEAD of a miss from
// Lookup.
type lookupCluster struct {
	server.Cluster // nil: any other method panics
	st             dtfc.State
	store          peer.LocalBlobs
}

func (l *lookupCluster) Removed() (time.Time, bool) { return time.Time{}, false }
func (l *lookupCluster) IdentityConflict() string   { return "" }
func (l *lookupCluster) Admit() (func(), error)     { return func() {}, nil }

func (l *lookupCluster) Lookup(_ context.Context, id dtfc.ID, _ bool) (dtfc.State, error) {
	if id != l.st.ID {
		return dtfc.State{}, peer.ErrNotFound
	}
	return l.st, nil
}

func (l *lookupCluster) Open(ctx context.Context, id dtfc.ID, opts peer.OpenOptions) (*peer.Blob, error) {
	b, err := peer.OpenLocal(l.store, id, opts)
	if err != blobstore.ErrNotFound || opts.LocalOnly || !opts.StateOnly {
		return b, err
	}
	st, err := l.Lookup(ctx, id, true)
	if err != nil {
		return nil, err
	}
	return peer.StateOnlyBlob(st, "http://peer.invalid"), nil
}
func (l *lookupCluster) InternalHandler() http.Handler { return http.NotFoundHandler() }
func (l *lookupCluster) Replicas() int                 { return 1 }
func (l *lookupCluster) Status() peer.Status           { return peer.Status{} }

// TestBlobAnswersSandboxed: every answer with a blob carries
// Content-Security-Policy: sandbox, once: small (from memory) and large
// (from the file), GET and HEAD, ranges, 304, the accel-redirect answer a
// front server sends on, and a miss answered from a peer. An HTML page
// or SVG image served from the node runs nothing as the node's origin
// (deploy/activecontent_test.go shows it in Chromium).
func TestBlobAnswersSandboxed(t *testing.T) {
	html := []byte("<!doctype html><script>document.title='ran'</script>")
	svg := append([]byte(`<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script>`), bytes.Repeat([]byte("<g/>"), 300<<10)...) // above the front cache's 16 KiB
	svg = append(svg, "</svg>"...)
	remote := dtfc.State{ID: dtfc.ID(sumBytes([]byte("held by a peer"))), Clock: 1, Node: "n", Size: 14, ContentType: "text/html"}
	lc := &lookupCluster{st: remote}
	n := startNode(t, server.Config{Cluster: lc})
	lc.store = n.store
	requireStatus(t, n.put(t, "/page.html", html), http.StatusCreated)
	requireStatus(t, n.put(t, "/image.svg", svg), http.StatusCreated)
	small, large := sum(html), sum(svg)

	for _, tt := range []struct {
		name, method, path string
		hdr                []string
		status             int
	}{
		{"small GET", http.MethodGet, "/" + small, nil, http.StatusOK},
		{"small HEAD", http.MethodHead, "/" + small, nil, http.StatusOK},
		{"large GET", http.MethodGet, "/" + large, nil, http.StatusOK},
		{"large HEAD", http.MethodHead, "/" + large + "/nopeerload", nil, http.StatusOK},
		{"range", http.MethodGet, "/" + large, []string{"Range", "bytes=0-99"}, http.StatusPartialContent},
		{"ranges", http.MethodGet, "/" + small, []string{"Range", "bytes=0-0,5-9"}, http.StatusPartialContent},
		{"not modified", http.MethodGet, "/" + small, []string{"If-None-Match", `"` + small + `"`}, http.StatusNotModified},
		{"accel redirect", http.MethodGet, "/" + large, []string{server.HeaderAccel, "/_dtfc_blobs"}, http.StatusOK},
		{"accel redirect, not modified", http.MethodHead, "/" + small, []string{server.HeaderAccel, "/_dtfc_blobs", "If-None-Match", `"` + small + `"`}, http.StatusNotModified},
		{"miss, HEAD answered by a peer", http.MethodHead, "/" + remote.ID.String(), nil, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := n.do(t, tt.method, tt.path, nil, tt.hdr...)
			requireStatus(t, a, tt.status)
			assert.Equal(t, []string{"sandbox"}, a.header.Values("Content-Security-Policy"))
			assert.Equal(t, []string{"nosniff"}, a.header.Values("X-Content-Type-Options"))
		})
	}
	assert.Equal(t, "peer", n.do(t, http.MethodHead, "/"+remote.ID.String(), nil).header.Get("X-Dtfc-Source"))
	assert.NotEmpty(t, n.do(t, http.MethodGet, "/"+large, nil, server.HeaderAccel, "/_dtfc_blobs").header.Get("X-Accel-Redirect"))
	// Not on dtfc's own status page, which has its own policy and must
	// reload itself.
	assert.NotContains(t, n.get(t, "/").header.Get("Content-Security-Policy"), "sandbox")
}

// startNodeWithMiss starts a node in a cluster (lookupCluster) that holds
// one blob this node does not: rid, a miss served from the peer.
func startNodeWithMiss(t *testing.T) (*node, dtfc.ID) {
	remote := []byte("held by a peer")
	rid := dtfc.ID(sumBytes(remote))
	lc := &lookupCluster{st: dtfc.State{ID: rid, Clock: 1, Node: "n", Size: int64(len(remote))}}
	n := startNode(t, server.Config{Cluster: lc})
	lc.store = n.store
	return n, rid
}

// TestAccelAnswers: what dtfc tells a front server (deploy/nginx.conf)
// that asks for accel redirects. A small hit is answered whole, with the
// second nginx may keep it until (X-Accel-Expires: @<unix second>); a
// large hit is a redirect to the file; a miss streamed from a peer is
// marked X-Accel-Buffering: no, so that it is passed on as it arrives and
// never kept. A client that asks nothing of the kind gets none of them.
func TestAccelAnswers(t *testing.T) {
	n, rid := startNodeWithMiss(t)
	small := bytes.Repeat([]byte("s"), 16<<10) // the most the front keeps
	large := append(bytes.Repeat([]byte("l"), 16<<10), 'l')
	requireStatus(t, n.put(t, "/small", small), http.StatusCreated)
	requireStatus(t, n.put(t, "/large", large), http.StatusCreated)
	accel := []string{server.HeaderAccel, "/_dtfc_blobs"}

	before := time.Now().Unix()
	a := n.do(t, http.MethodGet, "/"+sum(small), nil, accel...)
	after := time.Now().Unix()
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, small, a.body, "a small hit is answered whole")
	assert.Empty(t, a.header.Get("X-Accel-Redirect"))
	until, err := strconv.ParseInt(strings.TrimPrefix(a.header.Get("X-Accel-Expires"), "@"), 10, 64)
	require.NoError(t, err, "X-Accel-Expires: %q", a.header.Get("X-Accel-Expires"))
	assert.True(t, before <= until && until <= after, "kept until the second that has begun: %d, asked in [%d, %d]", until, before, after)
	assert.Empty(t, a.header.Get("X-Accel-Buffering"))

	a = n.do(t, http.MethodGet, "/"+sum(large), nil, accel...)
	requireStatus(t, a, http.StatusOK)
	assert.Empty(t, a.body)
	id := sum(large)
	assert.Equal(t, "/_dtfc_blobs/"+id[0:2]+"/"+id[2:4]+"/"+id, a.header.Get("X-Accel-Redirect"))
	assert.Empty(t, a.header.Get("X-Accel-Expires"), "a redirect is never kept")

	// A miss (here a HEAD, answered from the peer's state).
	a = n.do(t, http.MethodHead, "/"+rid.String(), nil, accel...)
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, "peer", a.header.Get("X-Dtfc-Source"))
	assert.Equal(t, "no", a.header.Get("X-Accel-Buffering"))
	assert.Empty(t, a.header.Get("X-Accel-Expires"), "a miss is never kept")

	// An error is never kept either.
	a = n.do(t, http.MethodGet, "/"+strings.Repeat("ab", 64)+"/nopeerload", nil, accel...)
	requireStatus(t, a, http.StatusNotFound)
	assert.Empty(t, a.header.Get("X-Accel-Expires"), "a 404 is never kept")

	for _, p := range []string{"/" + sum(small), "/" + sum(large), "/" + rid.String()} {
		a = n.do(t, http.MethodHead, p, nil)
		requireStatus(t, a, http.StatusOK)
		for _, h := range []string{"X-Accel-Redirect", "X-Accel-Expires", "X-Accel-Buffering"} {
			assert.Empty(t, a.header.Values(h), "%s without a front: %s", p, h)
		}
	}
}

// TestFrontAnswers: dtfc's answers to the two questions of
// deploy/nginx.conf (server.HeaderFront). "hit": a small hit whole and
// kept until the second is over, a large one 399 (398 with CORS headers)
// kept the same way and without a body, a miss streamed and never kept.
// "state": a local hit 200 with what the front needs to send the file,
// anything else 403 with no body.
func TestFrontAnswers(t *testing.T) {
	n, rid := startNodeWithMiss(t)
	small := bytes.Repeat([]byte("s"), 16<<10)
	large := append(bytes.Repeat([]byte("l"), 16<<10), 'l')
	requireStatus(t, n.put(t, "/small", small), http.StatusCreated)
	requireStatus(t, n.put(t, "/large.png", large), http.StatusCreated)
	gone := []byte("deleted")
	requireStatus(t, n.put(t, "/gone", gone), http.StatusCreated)
	requireStatus(t, n.do(t, http.MethodDelete, "/"+sum(gone), nil), http.StatusOK)
	hit := []string{server.HeaderFront, "hit"}
	state := []string{server.HeaderFront, "state"}
	kept := func(a answer, before, after int64) {
		t.Helper()
		until, err := strconv.ParseInt(strings.TrimPrefix(a.header.Get("X-Accel-Expires"), "@"), 10, 64)
		require.NoError(t, err, "X-Accel-Expires: %q", a.header.Get("X-Accel-Expires"))
		assert.True(t, before <= until && until <= after, "kept until the second that has begun: %d, asked in [%d, %d]", until, before, after)
	}

	before := time.Now().Unix()
	a := n.do(t, http.MethodGet, "/"+sum(small), nil, hit...)
	after := time.Now().Unix()
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, small, a.body, "a small hit is answered whole")
	kept(a, before, after)

	for _, m := range []string{http.MethodGet, http.MethodHead} {
		before = time.Now().Unix()
		a = n.do(t, m, "/"+sum(large), nil, hit...)
		after = time.Now().Unix()
		requireStatus(t, a, server.StatusFrontFile)
		assert.Empty(t, a.body)
		kept(a, before, after)
	}

	a = n.do(t, http.MethodHead, "/"+rid.String(), nil, hit...)
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, "peer", a.header.Get("X-Dtfc-Source"))
	assert.Equal(t, "no", a.header.Get("X-Accel-Buffering"))
	assert.Empty(t, a.header.Get("X-Accel-Expires"), "a miss is never kept")

	id := sum(large)
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		before = time.Now().Unix()
		a = n.do(t, m, "/"+id, nil, state...)
		after = time.Now().Unix()
		requireStatus(t, a, http.StatusOK)
		assert.Empty(t, a.body)
		assert.Equal(t, "image/png", a.header.Get("Content-Type"))
		assert.Equal(t, id, a.header.Get("X-Content-Sha512"))
		assert.Equal(t, "/"+id[0:2]+"/"+id[2:4]+"/"+id, a.header.Get("X-Dtfc-File"))
		kept(a, before, after)
	}
	for _, p := range []string{"/" + rid.String(), "/" + sum(gone), "/" + strings.Repeat("ab", 64), "/" + strings.ToUpper(id[:10]) + id[10:] + "x"} {
		a = n.do(t, http.MethodHead, p, nil, state...)
		assert.Equal(t, http.StatusForbidden, a.status, "%s", p)
		assert.Empty(t, a.header.Get("X-Accel-Expires"), "%s", p)
		assert.Empty(t, a.header.Get("X-Dtfc-File"), "%s", p)
	}

	// With cors_origins, every answer carries Vary: Origin, and the
	// front copies it from the state: 398.
	c := startNode(t, server.Config{CORSOrigins: []string{"https://app.example"}})
	requireStatus(t, c.put(t, "/large", large), http.StatusCreated)
	for _, o := range [][]string{nil, {"Origin", "https://app.example"}} {
		a = c.do(t, http.MethodGet, "/"+id, nil, append(o, hit...)...)
		requireStatus(t, a, server.StatusFrontFileCORS)
		a = c.do(t, http.MethodHead, "/"+id, nil, append(o, state...)...)
		requireStatus(t, a, http.StatusOK)
		assert.Equal(t, []string{"Origin"}, a.header.Values("Vary"))
	}
}

// TestFrontChecksTheFile: before it lets the front send a large blob's
// file itself (the "state" answer, an accel redirect), dtfc opens the
// file: one whose size is not the recorded one is quarantined and never
// handed to the front (dtfc answers for it, here a 404, on a cluster a
// fetch from a peer), and the read counts in a cache's least-recently-
// used order, so a blob the front keeps sending is not the one evicted.
// (With a look-up of the record only, the front sent the truncated file
// with its own length, and the hot blobs were evicted first.)
func TestFrontChecksTheFile(t *testing.T) {
	const size = 32 << 10
	parent := t.TempDir()
	n := startNodeStore(t, parent, filepath.Join(parent, "data"), server.Config{}, blobstore.Options{TrackAccess: true})
	state := []string{server.HeaderFront, "state"}
	accel := []string{server.HeaderAccel, "/_dtfc_blobs"}

	cut := decodeUpload(t, n.put(t, "/cut", randBytes(51, size))).SHA512
	require.NoError(t, os.Truncate(n.blobPath(cut), size-1))
	a := n.do(t, http.MethodHead, "/"+cut, nil, state...)
	assert.Equal(t, http.StatusForbidden, a.status, "state of a file cut short")
	assert.Empty(t, a.header.Get("X-Dtfc-File"))
	assert.NoFileExists(t, n.blobPath(cut), "quarantined")
	a = n.do(t, http.MethodGet, "/"+cut, nil, accel...)
	assert.Equal(t, http.StatusNotFound, a.status)
	assert.Empty(t, a.header.Get("X-Accel-Redirect"))

	grown := decodeUpload(t, n.put(t, "/grown", randBytes(52, size))).SHA512
	require.NoError(t, os.WriteFile(n.blobPath(grown), append(randBytes(52, size), 0), 0o644))
	a = n.do(t, http.MethodGet, "/"+grown, nil, accel...)
	assert.Equal(t, http.StatusNotFound, a.status, "accel redirect to a file grown")
	assert.Empty(t, a.header.Get("X-Accel-Redirect"))
	assert.NoFileExists(t, n.blobPath(grown), "quarantined")

	var ids []string
	for i := range 4 {
		ids = append(ids, decodeUpload(t, n.put(t, "/b", randBytes(60+uint64(i), size))).SHA512)
	}
	requireStatus(t, n.do(t, http.MethodHead, "/"+ids[0], nil, state...), http.StatusOK)
	a = n.do(t, http.MethodGet, "/"+ids[1], nil, accel...)
	requireStatus(t, a, http.StatusOK)
	require.NotEmpty(t, a.header.Get("X-Accel-Redirect"))
	evicted, err := n.store.Evict(2*size, 0, n.store.LastSeq())
	require.NoError(t, err)
	var got []string
	for _, st := range evicted {
		got = append(got, st.ID.String())
	}
	assert.Equal(t, ids[2:], got, "the blobs the front did not send are the least recently used")
}

func sumBytes(b []byte) [64]byte { return sha512.Sum512(b) }

// sendHead writes head (a request without a body, up to its blank line)
// as it is over a new connection and reads the answer.
func (n *node) sendHead(t testing.TB, head string) answer {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
	_, err = io.WriteString(c, head)
	require.NoError(t, err)
	return readAnswer(t, c, strings.Fields(head)[0])
}

// paddedHead is a request head of exactly size bytes, made up to size by
// an X-Pad field.
func paddedHead(t testing.TB, method, target, fields string, size int) string {
	t.Helper()
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: dtfc.test\r\n%sX-Pad: \r\n\r\n", method, target, fields)
	require.Less(t, len(head), size)
	head = strings.Replace(head, "X-Pad: ", "X-Pad: "+strings.Repeat("p", size-len(head)), 1)
	require.Len(t, head, size)
	return head
}

// TestMaxHeaderBytes: Config.MaxHeaderBytes is the exact bound on a
// request's head as sent over HTTP/1.1 (request line, fields, blank
// line): one byte more answers 431 as JSON, on every route; Go's client
// sees the same bound. (cmd/dtfc's tests show it over HTTP/2 and against
// the real daemon's net/http limits.)
func TestMaxHeaderBytes(t *testing.T) {
	const limit = 8 << 10
	n := startNode(t, server.Config{MaxHeaderBytes: limit})

	for _, tt := range []struct{ name, method, target, fields string }{
		{"GET /health", http.MethodGet, "/health", ""},
		{"GET a blob", http.MethodGet, "/" + strings.Repeat("ab", 64), "Accept: */*\r\nUser-Agent: test\r\n"},
		{"chunked PUT", http.MethodPut, "/pad.txt", "Transfer-Encoding: chunked\r\n"},
		{"node-to-node", http.MethodGet, "/_internal/digests", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			head := paddedHead(t, tt.method, tt.target, tt.fields, limit)
			if strings.Contains(tt.fields, "chunked") {
				head += "0\r\n\r\n"
			}
			a := n.sendHead(t, head)
			assert.NotEqual(t, http.StatusRequestHeaderFieldsTooLarge, a.status, "a head of exactly the limit: %s", a)
			head = paddedHead(t, tt.method, tt.target, tt.fields, limit+1)
			if strings.Contains(tt.fields, "chunked") {
				head += "0\r\n\r\n"
			}
			requireError(t, n.sendHead(t, head), http.StatusRequestHeaderFieldsTooLarge)
		})
	}

	t.Run("Go's client", func(t *testing.T) {
		requireStatus(t, n.get(t, "/health", "X-Pad", strings.Repeat("a", 7<<10)), http.StatusOK)
		a := n.get(t, "/health", "X-Pad", strings.Repeat("a", 9<<10))
		requireError(t, a, http.StatusRequestHeaderFieldsTooLarge)
		assert.Contains(t, string(a.body), "8192")
		// Many small fields count as much as one large one.
		var hdr []string
		for i := range 400 {
			hdr = append(hdr, fmt.Sprintf("X-Field-%03d", i), "0123456789")
		}
		requireError(t, n.get(t, "/health", hdr...), http.StatusRequestHeaderFieldsTooLarge)
	})

	t.Run("an upload refused stores nothing", func(t *testing.T) {
		n := startNode(t, server.Config{MaxHeaderBytes: limit})
		a := n.put(t, "/refused.txt", []byte("some bytes"), "X-Pad", strings.Repeat("a", 9<<10))
		requireError(t, a, http.StatusRequestHeaderFieldsTooLarge)
		n.requireNothingStored(t)
	})
}
