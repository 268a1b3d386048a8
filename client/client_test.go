package client_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/internal/cluster"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The examples use http.DefaultClient, as an application would.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	cluster.RemoveBinary()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newClient returns a client for urls whose connections the test closes.
func newClient(t *testing.T, urls ...string) *client.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := client.New(urls, client.Options{HTTPClient: &http.Client{Transport: tr}})
	require.NoError(t, err)
	return c
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

func idOf(b []byte) dtfc.ID {
	return dtfc.ID(sha512.Sum512(b))
}

// deadURL is a loopback URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

// readAll reads r in small reads, as a streaming consumer would, and
// returns the bytes, the error that ended the reading, and whether any
// read returned io.EOF (the end, accepted as good).
func readAll(r io.Reader) (data []byte, err error, sawEOF bool) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		data = append(data, buf[:n]...)
		if err == io.EOF {
			return data, nil, true
		}
		if err != nil {
			return data, err, false
		}
	}
}

func TestClientAgainstCluster(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Direct: true})
	ctx := t.Context()
	urls := []string{c.Nodes[0].URL, c.Nodes[1].URL, c.Nodes[2].URL}

	t.Run("round trip", func(t *testing.T) {
		cl := newClient(t, urls...)
		data := randomBytes(1, 300<<10)
		res, err := cl.Put(ctx, bytes.NewReader(data), client.PutOptions{Filename: "round.png"})
		require.NoError(t, err)
		assert.Equal(t, idOf(data), res.ID)
		assert.EqualValues(t, len(data), res.Size)
		assert.True(t, res.Created)
		assert.Equal(t, urls[0]+"/"+res.ID.String(), res.Location)

		again, err := cl.Put(ctx, bytes.NewReader(data), client.PutOptions{Filename: "round.png"})
		require.NoError(t, err)
		assert.False(t, again.Created, "already held")

		// From every node: held, replicated, or pulled from a peer.
		for _, u := range urls {
			one := newClient(t, u)
			rc, err := one.Get(ctx, res.ID)
			require.NoError(t, err, u)
			got, rerr, eof := readAll(rc)
			require.NoError(t, rc.Close())
			require.NoError(t, rerr, u)
			assert.True(t, eof)
			assert.True(t, bytes.Equal(data, got), "%s: the bytes", u)

			info, err := one.Stat(ctx, res.ID)
			require.NoError(t, err, u)
			assert.Equal(t, res.ID, info.ID)
			assert.EqualValues(t, len(data), info.Size)
			assert.Equal(t, "image/png", info.ContentType)
			assert.Contains(t, []string{"local", "peer"}, info.Source)
		}

		st, err := cl.Status(ctx)
		require.NoError(t, err)
		assert.Equal(t, urls[0], st.Node)

		require.NoError(t, cl.Delete(ctx, res.ID))
		_, err = cl.Get(ctx, res.ID)
		assert.ErrorIs(t, err, client.ErrNotFound)
		_, err = cl.Stat(ctx, res.ID)
		assert.ErrorIs(t, err, client.ErrNotFound)
	})

	t.Run("streamed upload waiting for replicas", func(t *testing.T) {
		cl := newClient(t, urls...)
		data := randomBytes(2, 8<<20)
		// Not a Seeker: sent chunked, and only the first node is tried.
		res, err := cl.Put(ctx, struct{ io.Reader }{bytes.NewReader(data)}, client.PutOptions{Filename: "big.bin", Replicas: 3})
		require.NoError(t, err)
		assert.Equal(t, idOf(data), res.ID)
		for _, u := range urls {
			info, err := newClient(t, u).Stat(ctx, res.ID)
			require.NoError(t, err)
			assert.Equal(t, "local", info.Source, "%s holds it once ?replicas=3 answered", u)
		}
	})

	t.Run("empty file", func(t *testing.T) {
		cl := newClient(t, urls...)
		res, err := cl.Put(ctx, bytes.NewReader(nil), client.PutOptions{Filename: "empty"})
		require.NoError(t, err)
		assert.Equal(t, idOf(nil), res.ID)
		rc, err := cl.Get(ctx, res.ID)
		require.NoError(t, err)
		got, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)
		assert.Empty(t, got)
	})

	t.Run("expected hash mismatch is refused", func(t *testing.T) {
		cl := newClient(t, urls...)
		data := []byte("these bytes are not the expected ones")
		other := idOf([]byte("the expected ones"))
		_, err := cl.Put(ctx, bytes.NewReader(data), client.PutOptions{Filename: "x.txt", Expected: other})
		require.Error(t, err)
		assert.ErrorIs(t, err, client.ErrDigestMismatch)
		var apiErr *client.Error
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, http.StatusBadRequest, apiErr.StatusCode)
		// Nothing stored, under either ID.
		for _, id := range []dtfc.ID{other, idOf(data)} {
			_, err := cl.Stat(ctx, id)
			assert.ErrorIs(t, err, client.ErrNotFound)
		}
		// The right expectation passes.
		res, err := cl.Put(ctx, bytes.NewReader(data), client.PutOptions{Filename: "x.txt", Expected: idOf(data)})
		require.NoError(t, err)
		assert.Equal(t, idOf(data), res.ID)
	})

	t.Run("not found", func(t *testing.T) {
		cl := newClient(t, urls...)
		unknown := idOf([]byte("never uploaded anywhere"))
		_, err := cl.Get(ctx, unknown)
		assert.ErrorIs(t, err, client.ErrNotFound)
		var apiErr *client.Error
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, http.StatusNotFound, apiErr.StatusCode)
		assert.NotEmpty(t, apiErr.Message, "the node's JSON error message")
		_, err = cl.Stat(ctx, unknown)
		assert.ErrorIs(t, err, client.ErrNotFound)
		assert.ErrorIs(t, cl.Delete(ctx, unknown), client.ErrNotFound)
		assert.NotErrorIs(t, err, client.ErrNoNodes, "a 404 is an answer, not an unreachable node")
	})

	t.Run("dead first URL", func(t *testing.T) {
		dead := deadURL(t)
		cl := newClient(t, dead, urls[1])
		data := randomBytes(3, 100<<10)
		res, err := cl.Put(ctx, bytes.NewReader(data), client.PutOptions{Filename: "fallback.bin"})
		require.NoError(t, err, "Put with an io.Seeker body falls back to the next node")
		assert.Equal(t, idOf(data), res.ID)
		assert.Equal(t, urls[1]+"/"+res.ID.String(), res.Location, "stored by the second node")

		rc, err := cl.Get(ctx, res.ID)
		require.NoError(t, err)
		got, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)
		assert.True(t, bytes.Equal(data, got))

		info, err := cl.Stat(ctx, res.ID)
		require.NoError(t, err)
		assert.EqualValues(t, len(data), info.Size)

		_, err = cl.Status(ctx)
		require.NoError(t, err)

		require.NoError(t, cl.Delete(ctx, res.ID))
		_, err = newClient(t, urls[1]).Stat(ctx, res.ID)
		assert.ErrorIs(t, err, client.ErrNotFound, "deleted through the second node")

		// A body that cannot be re-read is not sent twice.
		_, err = cl.Put(ctx, struct{ io.Reader }{bytes.NewReader(data)}, client.PutOptions{Filename: "once.bin"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "cannot be re-read")

		// Every node dead: ErrNoNodes, wrapping each failure.
		all := newClient(t, dead, deadURL(t))
		_, err = all.Get(ctx, res.ID)
		assert.ErrorIs(t, err, client.ErrNoNodes)
		assert.ErrorIs(t, all.Delete(ctx, res.ID), client.ErrNoNodes)
	})
}

// fakeNode serves one blob's ID with other bytes, as a node with a
// corrupted disk or a corrupting link in front of it would.
func fakeNode(t *testing.T, id dtfc.ID, body []byte, chunked bool, length int) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/"+id.String() {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("ETag", `"`+id.String()+`"`)
		h.Set("X-Content-SHA512", id.String())
		if !chunked {
			h.Set("Content-Length", strconv.Itoa(length))
		}
		w.WriteHeader(http.StatusOK)
		// In pieces, flushed: the client sees the bytes as they come.
		for len(body) > 0 {
			n := min(len(body), 8192)
			w.Write(body[:n])
			body = body[n:]
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestGetNeverReturnsWrongBytesSilently(t *testing.T) {
	good := randomBytes(4, 100<<10)
	id := idOf(good)
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0xFF
	for _, tt := range []struct {
		name    string
		body    []byte
		chunked bool
		length  int
		want    error // nil: any error
	}{
		{name: "one byte flipped", body: flipped, length: len(flipped), want: client.ErrDigestMismatch},
		{name: "one byte flipped, chunked", body: flipped, chunked: true, want: client.ErrDigestMismatch},
		{name: "other bytes entirely", body: randomBytes(5, len(good)), length: len(good), want: client.ErrDigestMismatch},
		{name: "truncated, chunked", body: good[:len(good)-1], chunked: true, want: client.ErrDigestMismatch},
		{name: "one byte too many, chunked", body: append(bytes.Clone(good), 0), chunked: true, want: client.ErrDigestMismatch},
		{name: "truncated below its Content-Length", body: good[:len(good)/2], length: len(good)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakeNode(t, id, tt.body, tt.chunked, tt.length)
			cl := newClient(t, srv.URL)
			rc, err := cl.Get(t.Context(), id)
			require.NoError(t, err, "the answer's headers are fine; the bytes are not")
			got, rerr, sawEOF := readAll(rc)
			rc.Close()
			assert.False(t, sawEOF, "a read returned io.EOF: the wrong bytes were accepted")
			require.Error(t, rerr)
			if tt.want != nil {
				assert.ErrorIs(t, rerr, tt.want)
			}
			assert.LessOrEqual(t, len(got), len(tt.body))
			// And the error stays: reading on gives no EOF.
			_, err = rc.Read(make([]byte, 10))
			assert.Error(t, err)
			assert.NotErrorIs(t, err, io.EOF)
		})
	}

	t.Run("the right bytes pass", func(t *testing.T) {
		srv := fakeNode(t, id, good, true, 0)
		rc, err := newClient(t, srv.URL).Get(t.Context(), id)
		require.NoError(t, err)
		got, rerr, sawEOF := readAll(rc)
		rc.Close()
		require.NoError(t, rerr)
		assert.True(t, sawEOF)
		assert.Equal(t, good, got)
	})
}

// A node that stores something else than what was sent (an upload
// corrupted in transit) is caught by Put's own hash.
func TestPutChecksTheAnsweredID(t *testing.T) {
	var calls atomic.Int32
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		b = append(b, '!') // what a corrupting link would deliver
		sum := sha512.Sum512(b)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"sha512":%q,"size":%d}`, hex.EncodeToString(sum[:]), len(b))
	}))
	t.Cleanup(liar.Close)
	_, err := newClient(t, liar.URL).Put(t.Context(), strings.NewReader("payload"), client.PutOptions{Filename: "p.txt"})
	assert.ErrorIs(t, err, client.ErrDigestMismatch)
	assert.EqualValues(t, 1, calls.Load())
}

// errorServer answers every request with status and the JSON body,
// counting the requests in calls.
func errorServer(t *testing.T, calls *atomic.Int32, status int, body string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A node failing on its side (5xx) is skipped like an unreachable one;
// a refusal (4xx) is final.
func TestServerErrorsFallBack(t *testing.T) {
	var fails, refuses atomic.Int32
	failing := errorServer(t, &fails, http.StatusServiceUnavailable, `{"error":"shutting down"}`)
	refusing := errorServer(t, &refuses, http.StatusUnauthorized, `{"error":"this node requires a write token"}`)

	data := []byte("five hundred and three")
	_, err := newClient(t, failing.URL, refusing.URL).Put(t.Context(), bytes.NewReader(data), client.PutOptions{Filename: "a.txt"})
	var apiErr *client.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusUnauthorized, apiErr.StatusCode, "the second node's answer")
	assert.Equal(t, "this node requires a write token", apiErr.Message)
	assert.EqualValues(t, 1, fails.Load())
	assert.EqualValues(t, 1, refuses.Load())

	_, err = newClient(t, refusing.URL, failing.URL).Put(t.Context(), bytes.NewReader(data), client.PutOptions{Filename: "a.txt"})
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusUnauthorized, apiErr.StatusCode)
	assert.EqualValues(t, 1, fails.Load(), "a 4xx is not retried on another node")
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, urls := range [][]string{nil, {}, {"localhost:8080"}, {"ftp://x"}, {"http://"}, {"http://ok:1", "::"}} {
		_, err := client.New(urls, client.Options{})
		assert.Error(t, err, "%q", urls)
	}
	c, err := client.New([]string{"http://a:1/", "https://b"}, client.Options{Token: "t"})
	require.NoError(t, err)
	assert.NotNil(t, c)
}

func TestContextCancelStops(t *testing.T) {
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(block); slow.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := newClient(t, slow.URL, deadURL(t)).Stat(ctx, idOf(nil))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, client.ErrNoNodes, "a cancelled call does not go on to the next node")
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.True(t, errors.Is(err, context.DeadlineExceeded))
}

// TestPutReplicasTimeoutIsFinal: a 504 to ?replicas=N means the file is
// stored and still replicating: the upload is not sent to the next node,
// where it would only wait again (found by a review helper); a 504
// without replicas is retried there as before.
func TestPutReplicasTimeoutIsFinal(t *testing.T) {
	var second atomic.Int32
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusGatewayTimeout)
		io.WriteString(w, `{"error":"not enough replicas confirmed in time; the file is stored and still replicating"}`)
	}))
	defer first.Close()
	next := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		second.Add(1)
		http.Error(w, "unused", http.StatusInternalServerError)
	}))
	defer next.Close()
	c, err := client.New([]string{first.URL, next.URL}, client.Options{})
	require.NoError(t, err)

	_, err = c.Put(t.Context(), strings.NewReader("stored, replicating"), client.PutOptions{Replicas: 2})
	var e *client.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, http.StatusGatewayTimeout, e.StatusCode)
	assert.Zero(t, second.Load(), "sent again to the next node")

	_, err = c.Put(t.Context(), strings.NewReader("no replicas asked"), client.PutOptions{})
	require.Error(t, err)
	assert.EqualValues(t, 1, second.Load(), "a 504 without replicas goes on to the next node")
}
