package cluster

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// within bounds every wait for something that must happen; stillFor is
// how long something that must not happen is watched for.
const (
	within   = 10 * time.Second
	stillFor = 300 * time.Millisecond
)

// patterned returns n bytes that differ from their neighbours, so that a
// slip or a lost stretch shows.
func patterned(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*131 + i>>9)
	}
	return b
}

// answerer serves ?size=N patterned bytes, with a Content-Length unless
// ?chunked=1: then it sends its header first, so that the proxy does not
// know the length either.
func answerer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		size, _ := strconv.Atoi(r.URL.Query().Get("size"))
		if r.URL.Query().Get("chunked") != "" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		w.Write(patterned(size))
	})
}

// fetch gets size bytes from answerer through c, and returns what came of
// the body and the error that ended it (nil: a clean end).
func fetch(t *testing.T, c *corruptor, hc *http.Client, size int, chunked bool) ([]byte, error) {
	t.Helper()
	u := fmt.Sprintf("http://%s/?size=%d", c.addr(), size)
	if chunked {
		u += "&chunked=1"
	}
	res, err := hc.Get(u)
	require.NoError(t, err, "the header comes whole, cut or not")
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	return io.ReadAll(res.Body)
}

// TestCorruptorCutAfter checks that an armed cut passes exactly n bytes of
// the first answer longer than that and then breaks the connection, and
// only of that one.
func TestCorruptorCutAfter(t *testing.T) {
	c, hc := corruptorBefore(t, answerer())
	whole := func(t *testing.T, size int, chunked bool) {
		t.Helper()
		got, err := fetch(t, c, hc, size, chunked)
		require.NoError(t, err)
		require.True(t, bytes.Equal(patterned(size), got), "got %d bytes of %d", len(got), size)
	}
	cut := func(t *testing.T, size int, chunked bool, n int) {
		t.Helper()
		got, err := fetch(t, c, hc, size, chunked)
		// io.ReadAll ends cleanly only on io.EOF: an error is a body that
		// does not look complete.
		require.Error(t, err, "cut after %d bytes of %d: the client must not see a clean end", n, size)
		require.True(t, bytes.Equal(patterned(size)[:n], got), "got %d bytes, want the first %d of %d", len(got), n, size)
	}

	for _, tc := range []struct {
		name    string
		size, n int
		chunked bool
	}{
		{"known length", 1 << 20, 600_000, false},
		{"unknown length", 1 << 20, 100_000, true},
		{"before the first byte", 1 << 20, 0, false},
		{"unknown length before the first byte", 1 << 20, 0, true},
		{"one byte short", 1000, 999, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.arm(&cutShot{n: int64(tc.n)})
			cut(t, tc.size, tc.chunked, tc.n)
			whole(t, tc.size, tc.chunked) // once only
		})
	}

	t.Run("shorter answers pass and leave it armed", func(t *testing.T) {
		c.arm(&cutShot{n: 1000})
		whole(t, 1000, false) // known not to be longer
		whole(t, 1000, true)  // seen not to be longer: ends at the cut
		whole(t, 10, true)
		cut(t, 1001, true, 1000)
		whole(t, 1001, true)
	})
	t.Run("arming again replaces", func(t *testing.T) {
		c.arm(&cutShot{n: 100})
		c.arm(&cutShot{n: 200})
		cut(t, 5000, false, 200)
		whole(t, 5000, false)
	})
	t.Run("healing disarms", func(t *testing.T) {
		c.arm(&cutShot{n: 100})
		c.uncut()
		whole(t, 5000, false)
	})
}

// streamer is a node that answers a never-ending body (no length) and
// tells on ended when it stopped because the proxy let go of the answer.
func streamer(ended chan<- struct{}) http.Handler {
	chunk := patterned(1 << 16)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { ended <- struct{}{} }()
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
}

type readResult struct {
	n   int
	err error
}

// readAsync reads from r into p in a goroutine (all of p if full), and
// reports on the channel returned.
func readAsync(r io.Reader, p []byte, full bool) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		var res readResult
		if full {
			res.n, res.err = io.ReadFull(r, p)
		} else {
			res.n, res.err = r.Read(p)
		}
		ch <- res
	}()
	return ch
}

// stalled gets an answer from streamer through c with a stall armed at n
// bytes, and checks that n bytes come and then nothing. It returns the
// answer and the channel of the read waiting for more.
func stalled(t *testing.T, c *corruptor, hc *http.Client, n int) (*http.Response, <-chan readResult) {
	t.Helper()
	c.arm(&cutShot{n: int64(n), stall: true})
	res, err := hc.Get("http://" + c.addr() + "/")
	require.NoError(t, err)
	t.Cleanup(func() { res.Body.Close() })
	got := make([]byte, n)
	select {
	case r := <-readAsync(res.Body, got, true):
		require.NoError(t, r.err)
		require.True(t, bytes.Equal(bytes.Repeat(patterned(1<<16), n>>16+1)[:n], got), "the first %d bytes", n)
	case <-time.After(within):
		t.Fatalf("the first %d bytes did not come in %s", n, within)
	}
	more := readAsync(res.Body, make([]byte, 1), false)
	select {
	case r := <-more:
		t.Fatalf("a read past the stall returned %d, %v", r.n, r.err)
	case <-time.After(stillFor):
	}
	return res, more
}

// ends checks that the stalled read returns an error, that the proxy's
// goroutine stalling it ends, and that the proxy let go of the node's
// answer.
func ends(t *testing.T, more <-chan readResult, ended <-chan struct{}) {
	t.Helper()
	select {
	case r := <-more:
		assert.Zero(t, r.n)
		assert.Error(t, r.err, "a stalled answer ends broken")
	case <-time.After(within):
		t.Fatalf("the stalled read did not end in %s", within)
	}
	// The client's connection failing does not show that: the proxy's
	// side of it may go on waiting.
	for deadline := time.Now().Add(within); stalling(); {
		if time.Now().After(deadline) {
			t.Fatalf("a proxy goroutine still stalls an answer after %s", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-ended:
	case <-time.After(within):
		t.Fatalf("the proxy still holds the node's answer after %s", within)
	}
}

// stalling reports whether a goroutine is in a cutReader's Read.
func stalling() bool {
	buf := make([]byte, 1<<20)
	return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("(*cutReader).Read"))
}

// TestCorruptorStallAfter checks that a stall passes n bytes and then
// holds the connection, open, until it is healed, the corruptor closed,
// or the client gives up, and that it stalls one answer only.
func TestCorruptorStallAfter(t *testing.T) {
	t.Run("healed", func(t *testing.T) {
		ended := make(chan struct{}, 2)
		c, hc := corruptorBefore(t, streamer(ended))
		_, more := stalled(t, c, hc, 300_000)

		// Once only: a second answer flows past the stall.
		res, err := hc.Get("http://" + c.addr() + "/")
		require.NoError(t, err)
		select {
		case r := <-readAsync(res.Body, make([]byte, 600_000), true):
			require.NoError(t, r.err)
		case <-time.After(within):
			t.Fatalf("a second answer stalled too")
		}
		res.Body.Close()
		select {
		case <-ended:
		case <-time.After(within):
			t.Fatalf("the second answer was not let go of")
		}

		c.uncut()
		ends(t, more, ended)
	})

	t.Run("closed", func(t *testing.T) {
		// Not corruptorBefore: its cleanup would close the corruptor a
		// second time.
		ended := make(chan struct{}, 1)
		srv := httptest.NewServer(streamer(ended))
		t.Cleanup(srv.Close)
		target, err := url.Parse(srv.URL)
		require.NoError(t, err)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		c := newCorruptor(target, ln)
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		_, more := stalled(t, c, &http.Client{Transport: tr}, 0)
		c.close()
		ends(t, more, ended)
	})

	t.Run("client gives up", func(t *testing.T) {
		ended := make(chan struct{}, 1)
		c, hc := corruptorBefore(t, streamer(ended))
		res, more := stalled(t, c, hc, 70_000)
		res.Body.Close()
		ends(t, more, ended)
	})
}

// TestCorruptorCarried checks that the corruptor counts the answer bytes
// it passes on, those of an answer cut short included, and no request
// bytes.
func TestCorruptorCarried(t *testing.T) {
	c, hc := corruptorBefore(t, answerer())
	assert.Zero(t, c.carried.Load())

	got, err := fetch(t, c, hc, 100_000, false)
	require.NoError(t, err)
	require.Len(t, got, 100_000)
	assert.Equal(t, int64(100_000), c.carried.Load())

	got, err = fetch(t, c, hc, 50_000, true)
	require.NoError(t, err)
	require.Len(t, got, 50_000)
	assert.Equal(t, int64(150_000), c.carried.Load(), "chunk framing not counted")

	c.arm(&cutShot{n: 30_000})
	got, err = fetch(t, c, hc, 100_000, false)
	require.Error(t, err)
	require.Len(t, got, 30_000)
	assert.Equal(t, int64(180_000), c.carried.Load(), "a cut answer counts what passed")

	res, err := hc.Post("http://"+c.addr()+"/?size=10", "application/octet-stream", bytes.NewReader(patterned(200_000)))
	require.NoError(t, err)
	got, err = io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	require.Len(t, got, 10)
	assert.Equal(t, int64(180_010), c.carried.Load(), "requests not counted")
}

// taken is what taker read of a request body.
type taken struct {
	body []byte
	err  error
}

// taker reads request bodies and reports each on the channel, and
// answers ?size=N patterned bytes; with ?refuse=1 it answers 409 without
// reading (as a node refusing a push that expects 100 Continue does).
func taker(got chan<- taken) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("refuse") != "" {
			w.WriteHeader(http.StatusConflict)
			w.(http.Flusher).Flush()
			got <- taken{}
			return
		}
		body, err := io.ReadAll(r.Body)
		size, _ := strconv.Atoi(r.URL.Query().Get("size"))
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.Write(patterned(size))
		got <- taken{body, err}
	})
}

// TestCorruptorCutRequestAfter checks that an armed request cut passes at
// most n bytes of the first request body longer than that (exactly n
// when the request expected 100 Continue), so that the node reads a
// short body and the sender sees its request fail; that it fires once;
// and that CarriedRequests counts what passed, a request refused before
// its body (100 Continue) included as nothing.
func TestCorruptorCutRequestAfter(t *testing.T) {
	got := make(chan taken, 1)
	c, hc := corruptorBefore(t, taker(got))
	// Long: a refusal must come before any body byte, not after a wait.
	hc.Transport.(*http.Transport).ExpectContinueTimeout = within
	send := func(t *testing.T, size int, expect bool, query string) (*http.Response, error, taken) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPut, "http://"+c.addr()+"/"+query, bytes.NewReader(patterned(size)))
		require.NoError(t, err)
		if expect {
			req.Header.Set("Expect", "100-continue")
		}
		res, err := hc.Do(req)
		if err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		select {
		case tk := <-got:
			return res, err, tk
		case <-time.After(within):
			t.Fatalf("the node got no request in %s", within)
		}
		return nil, nil, taken{}
	}
	whole := func(t *testing.T, size int, expect bool) {
		t.Helper()
		before := c.carriedReq.Load()
		res, err, tk := send(t, size, expect, "")
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		require.NoError(t, tk.err)
		require.True(t, bytes.Equal(patterned(size), tk.body), "the node got %d bytes of %d", len(tk.body), size)
		assert.Equal(t, int64(size), c.carriedReq.Load()-before)
	}
	cut := func(t *testing.T, size int, expect bool, n int) {
		t.Helper()
		before := c.carriedReq.Load()
		_, err, tk := send(t, size, expect, "")
		require.Error(t, err, "cut after %d bytes of %d: the sender must see its request fail", n, size)
		require.Error(t, tk.err, "the node must read a broken body")
		if expect {
			require.Len(t, tk.body, n)
		} else {
			require.LessOrEqual(t, len(tk.body), n)
			require.GreaterOrEqual(t, len(tk.body), n-4096)
		}
		require.True(t, bytes.Equal(patterned(size)[:len(tk.body)], tk.body), "the node got other bytes")
		assert.Equal(t, int64(n), c.carriedReq.Load()-before, "what passed is counted")
	}

	for _, tc := range []struct {
		name    string
		size, n int
		expect  bool
	}{
		{"expecting 100 Continue", 1 << 20, 600_000, true},
		{"plain", 1 << 20, 600_000, false},
		{"before the first byte", 1 << 20, 0, true},
		{"one byte short", 1000, 999, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.reqShot.Store(&cutShot{n: int64(tc.n)})
			cut(t, tc.size, tc.expect, tc.n)
			whole(t, tc.size, tc.expect) // once only
		})
	}
	t.Run("shorter bodies pass and leave it armed", func(t *testing.T) {
		c.reqShot.Store(&cutShot{n: 1000})
		whole(t, 1000, true)
		whole(t, 10, false)
		cut(t, 1001, true, 1000)
		whole(t, 1001, true)
	})
	t.Run("answers are not cut by it", func(t *testing.T) {
		c.reqShot.Store(&cutShot{n: 100})
		b, err := fetch(t, c, hc, 5000, false)
		require.NoError(t, err)
		require.Len(t, b, 5000)
		<-got
		c.uncut()
		whole(t, 5000, true) // healing disarms
	})
	t.Run("a refusal before the body carries none of it", func(t *testing.T) {
		before := c.carriedReq.Load()
		res, err, tk := send(t, 1<<20, true, "?refuse=1")
		require.NoError(t, err)
		assert.Equal(t, http.StatusConflict, res.StatusCode)
		assert.Empty(t, tk.body)
		assert.Equal(t, before, c.carriedReq.Load())
	})
}
