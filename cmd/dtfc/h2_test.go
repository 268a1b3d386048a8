package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tlsServer is a dtfc process serving HTTPS with a certificate of its own
// test CA.
type tlsServer struct {
	*proc
	base   string
	caPath string
	pool   *x509.CertPool
}

// startTLSServer runs `dtfc serve` over HTTPS on a free loopback port.
func startTLSServer(t *testing.T, extra ...string) *tlsServer {
	t.Helper()
	dir := t.TempDir()
	ca := newCA(t, "h2 test CA")
	cert, key, _ := ca.issue(t, dir, "node")
	caPath := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caPath, ca.pem, 0o644))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	port := freePort(t)
	url := "https://127.0.0.1:" + strconv.Itoa(port)
	base := filepath.Join(dir, "data")
	args := append([]string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--basedir", base,
		"--tls-cert", cert, "--tls-key", key}, extra...)
	p := startProcWith(t, tlsClient(t, ca, "", ""), url, args...)
	return &tlsServer{proc: p, base: base, caPath: caPath, pool: pool}
}

// client returns a client of the server that offers HTTP/2 (h2 true) or
// only HTTP/1.1. Its connections are closed in t.Cleanup.
func (s *tlsServer) client(t *testing.T, h2 bool) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS12}}
	var p http.Protocols
	p.SetHTTP1(!h2)
	p.SetHTTP2(h2)
	tr.Protocols = &p
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: deadline}
}

// h2Do sends a request and reads the whole answer; hdr holds header names
// and values in turn.
func h2Do(t *testing.T, hc *http.Client, method, url string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	require.NoError(t, err, "%s %s", method, url)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "%s %s: the body", method, url)
	return resp, b
}

// isJSONError checks dtfc's error contract: JSON {"error": "..."}.
func isJSONError(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s", body)
	var e struct{ Error string }
	require.NoError(t, json.Unmarshal(body, &e), "%s", body)
	assert.NotEmpty(t, e.Error)
}

// TestHTTP2 runs a real node over TLS: a client that offers h2 gets it
// (ALPN), one that does not gets HTTP/1.1; uploads and downloads work over
// HTTP/2 with the limits of HTTP/1.1: max_header_bytes (431), a stalled
// upload body (408 after idle_timeout, per stream), max_upload_bytes
// (413). TestHTTP2Streams checks the bound on concurrent streams.
func TestHTTP2(t *testing.T) {
	s := startTLSServer(t, "--idle-timeout", "1s", "--max-upload-bytes", "1MiB", "--read-header-timeout", "2s")
	h2, h1 := s.client(t, true), s.client(t, false)

	t.Run("ALPN", func(t *testing.T) {
		resp, _ := h2Do(t, h2, http.MethodGet, s.url+"/health", nil)
		assert.Equal(t, "HTTP/2.0", resp.Proto)
		require.NotNil(t, resp.TLS)
		assert.Equal(t, "h2", resp.TLS.NegotiatedProtocol)
		resp, _ = h2Do(t, h1, http.MethodGet, s.url+"/health", nil)
		assert.Equal(t, "HTTP/1.1", resp.Proto, "a client without h2 still gets HTTP/1.1")
	})

	t.Run("curl --http2", func(t *testing.T) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			t.Skip("curl is not installed: apt-get install -y curl")
		}
		out, err := exec.CommandContext(t.Context(), curl, "--http2", "--cacert", s.caPath, "-sS", "-o", "/dev/null",
			"-w", "%{http_version}", s.url+"/health").CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Equal(t, "2", string(out), "curl negotiated HTTP/%s", out)
	})

	t.Run("upload and download", func(t *testing.T) {
		data := randBytes(21, 900<<10)
		id := sum(data)
		resp, body := h2Do(t, h2, http.MethodPut, s.url+"/photo.jpg", bytes.NewReader(data))
		require.Equal(t, http.StatusCreated, resp.StatusCode, "%s", body)
		assert.Equal(t, "HTTP/2.0", resp.Proto)
		assert.Contains(t, string(body), id)
		// Chunked, in HTTP/2 terms: a body of unknown length.
		more := randBytes(22, 300<<10)
		resp, body = h2Do(t, h2, http.MethodPost, s.url+"/?filename=more.bin", io.MultiReader(bytes.NewReader(more)))
		require.Equal(t, http.StatusCreated, resp.StatusCode, "%s", body)
		assert.Contains(t, string(body), sum(more))

		resp, got := h2Do(t, h2, http.MethodGet, s.url+"/"+id, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "HTTP/2.0", resp.Proto)
		assert.True(t, bytes.Equal(data, got), "the bytes read back over HTTP/2")
		assert.Equal(t, "image/jpeg", resp.Header.Get("Content-Type"))
		assert.Equal(t, `"`+id+`"`, resp.Header.Get("Etag"))
		assert.Equal(t, "sandbox", resp.Header.Get("Content-Security-Policy"))
		resp, got = h2Do(t, h2, http.MethodGet, s.url+"/"+id, nil, "Range", "bytes=10-19")
		assert.Equal(t, http.StatusPartialContent, resp.StatusCode)
		assert.Equal(t, data[10:20], got)
		resp, _ = h2Do(t, h2, http.MethodGet, s.url+"/"+id, nil, "If-None-Match", `"`+id+`"`)
		assert.Equal(t, http.StatusNotModified, resp.StatusCode)
	})

	t.Run("max_header_bytes", func(t *testing.T) {
		for name, hc := range map[string]*http.Client{"HTTP/2": h2, "HTTP/1.1": h1} {
			resp, body := h2Do(t, hc, http.MethodGet, s.url+"/health", nil, "X-Pad", strings.Repeat("a", 7<<10))
			assert.Equal(t, http.StatusOK, resp.StatusCode, "%s: 7 KiB of header: %s", name, body)
			resp, body = h2Do(t, hc, http.MethodGet, s.url+"/health", nil, "X-Pad", strings.Repeat("a", 9<<10))
			assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode, "%s: 9 KiB of header: %s", name, body)
			isJSONError(t, resp, body)
			want := "HTTP/2.0"
			if hc == h1 {
				want = "HTTP/1.1"
			}
			assert.Equal(t, want, resp.Proto)
		}
	})

	t.Run("stalled upload", func(t *testing.T) {
		// 64 KiB, then nothing. A pipe, not a reader that blocks: the
		// transport closes it to give up the body once answered.
		pr, pw := io.Pipe()
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			pw.Write(randBytes(23, 64<<10))
		}()
		t.Cleanup(func() { pw.Close(); <-sent })
		// Meanwhile, on the same connection, an upload that trickles a
		// byte every 300 ms for 3 s: the deadline is per stream and per
		// read, so it succeeds.
		trickled := make(chan error, 1)
		slow := []byte("0123456789")
		var conns sync.Map // request name -> the connection it used
		traced := func(name string) context.Context {
			return httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { conns.Store(name, i.Conn) }})
		}
		go func() {
			req, err := http.NewRequestWithContext(traced("trickled"), http.MethodPut, s.url+"/trickled.txt", &trickle{data: slow, every: 300 * time.Millisecond})
			if err != nil {
				trickled <- err
				return
			}
			resp, err := h2.Do(req)
			if err != nil {
				trickled <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated || resp.Proto != "HTTP/2.0" {
				err = fmt.Errorf("%s %s: %s", resp.Proto, resp.Status, b)
			}
			trickled <- err
		}()
		req, err := http.NewRequestWithContext(traced("stalled"), http.MethodPut, s.url+"/stalled.bin", pr)
		require.NoError(t, err)
		start := time.Now()
		resp, err := h2.Do(req)
		require.NoError(t, err)
		took := time.Since(start)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, "HTTP/2.0", resp.Proto)
		assert.Equal(t, http.StatusRequestTimeout, resp.StatusCode, "%s", b)
		isJSONError(t, resp, b)
		t.Logf("stalled HTTP/2 upload answered %d after %v (idle timeout 1s)", resp.StatusCode, took.Round(time.Millisecond))
		assert.GreaterOrEqual(t, took, time.Second, "answered before the idle timeout")
		assert.Less(t, took, 10*time.Second)
		select {
		case err := <-trickled:
			require.NoError(t, err, "the trickling upload beside the stalled one")
		case <-time.After(deadline):
			require.FailNow(t, "the trickling upload did not end")
		}
		t.Logf("the trickling upload on the same connection succeeded after %v", time.Since(start).Round(time.Millisecond))
		c1, _ := conns.Load("stalled")
		c2, _ := conns.Load("trickled")
		require.NotNil(t, c1)
		assert.Same(t, c1, c2, "both uploads shared one HTTP/2 connection")
		assert.Equal(t, slow, mustGetTLS(t, h2, s.url, sum(slow)))
		waitUntil(t, "no temp file left", func() bool { return !hasFileOver(t, filepath.Join(s.base, "tmp"), -1) })
		// The node still serves HTTP/2 afterwards.
		resp, _ = h2Do(t, h2, http.MethodGet, s.url+"/health", nil)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	})

	t.Run("read_header_timeout bounds the TLS handshake", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.url, "https://"), deadline)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
		start := time.Now()
		_, err = c.Read(make([]byte, 1)) // no ClientHello: the server must give up
		took := time.Since(start)
		require.Error(t, err)
		assert.NotErrorIs(t, err, os.ErrDeadlineExceeded, "the server never closed the connection")
		t.Logf("a silent TLS client was cut off after %v (read_header_timeout 2s)", took.Round(time.Millisecond))
		assert.GreaterOrEqual(t, took, 1900*time.Millisecond)
		assert.Less(t, took, 10*time.Second)
	})

	t.Run("max_upload_bytes", func(t *testing.T) {
		big := randBytes(24, 2<<20)
		resp, body := h2Do(t, h2, http.MethodPut, s.url+"/big.bin", bytes.NewReader(big))
		assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "with a length: %s", body)
		isJSONError(t, resp, body)
		resp, body = h2Do(t, h2, http.MethodPut, s.url+"/big.bin", io.MultiReader(bytes.NewReader(big)))
		assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "without a length: %s", body)
		assert.Equal(t, "HTTP/2.0", resp.Proto)
		resp, _ = h2Do(t, h2, http.MethodGet, s.url+"/"+sum(big)+"?nopeerload=1", nil)
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, "nothing stored")
	})
}

// trickle yields one byte of data per Read, every so often.
type trickle struct {
	data  []byte
	every time.Duration
}

func (tr *trickle) Read(p []byte) (int, error) {
	if len(tr.data) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	time.Sleep(tr.every) // the body's pace: what is under test
	p[0], tr.data = tr.data[0], tr.data[1:]
	return 1, nil
}

func mustGetTLS(t *testing.T, hc *http.Client, base, id string) []byte {
	t.Helper()
	resp, b := h2Do(t, hc, http.MethodGet, base+"/"+id, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	return b
}

// h2Frame is one HTTP/2 frame (RFC 9113, section 4.1).
type h2Frame struct {
	typ, flags byte
	stream     uint32
	payload    []byte
}

const (
	frameHeaders   = 0x1
	frameRSTStream = 0x3
	frameSettings  = 0x4
	frameGoAway    = 0x7
	flagAck        = 0x1
	flagEndHeaders = 0x4

	settingMaxConcurrentStreams = 0x3
	settingMaxHeaderListSize    = 0x6
)

// rawH2 is a minimal HTTP/2 client over TLS: it writes frames as given
// and records what the server sends, acknowledging its SETTINGS.
type rawH2 struct {
	conn *tls.Conn
	wmu  sync.Mutex
	done chan struct{}

	mu       sync.Mutex
	settings map[uint16]uint32
	resets   map[uint32]uint32 // stream -> error code
	goaway   bool
	err      error
}

func dialH2(t *testing.T, s *tlsServer) *rawH2 {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.url, "https://"), &tls.Config{RootCAs: s.pool, NextProtos: []string{"h2"}})
	require.NoError(t, err)
	require.Equal(t, "h2", conn.ConnectionState().NegotiatedProtocol)
	c := &rawH2{conn: conn, done: make(chan struct{}), resets: map[uint32]uint32{}}
	_, err = io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	require.NoError(t, err)
	require.NoError(t, c.write(frameSettings, 0, 0, nil))
	go c.read()
	t.Cleanup(func() {
		conn.Close()
		<-c.done
	})
	return c
}

func (c *rawH2) write(typ, flags byte, stream uint32, payload []byte) error {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(append(hdr[:], payload...))
	return err
}

func (c *rawH2) read() {
	defer close(c.done)
	r := bufio.NewReader(c.conn)
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			c.fail(err)
			return
		}
		f := h2Frame{typ: hdr[3], flags: hdr[4], stream: binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff,
			payload: make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))}
		if _, err := io.ReadFull(r, f.payload); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		switch {
		case f.typ == frameSettings && f.flags&flagAck == 0:
			c.settings = map[uint16]uint32{}
			for p := f.payload; len(p) >= 6; p = p[6:] {
				c.settings[binary.BigEndian.Uint16(p)] = binary.BigEndian.Uint32(p[2:])
			}
		case f.typ == frameRSTStream && len(f.payload) == 4:
			c.resets[f.stream] = binary.BigEndian.Uint32(f.payload)
		case f.typ == frameGoAway:
			c.goaway = true
		}
		c.mu.Unlock()
		if f.typ == frameSettings && f.flags&flagAck == 0 {
			if err := c.write(frameSettings, flagAck, 0, nil); err != nil {
				c.fail(err)
				return
			}
		}
	}
}

func (c *rawH2) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

// postHeaders opens stream id with "POST /" and no end of stream: an
// upload whose body never comes. The header block is HPACK with static
// table entries and one literal (RFC 7541).
func (c *rawH2) postHeaders(t *testing.T, authority string, id uint32) {
	t.Helper()
	block := []byte{0x83, 0x84, 0x87} // :method POST, :path /, :scheme https
	block = append(block, 0x01, byte(len(authority)))
	block = append(block, authority...) // :authority, literal without indexing
	require.NoError(t, c.write(frameHeaders, flagEndHeaders, id, block))
}

func (c *rawH2) state() (settings map[uint16]uint32, resets map[uint32]uint32, goaway bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	resets = map[uint32]uint32{}
	for k, v := range c.resets {
		resets[k] = v
	}
	return c.settings, resets, c.goaway, c.err
}

// inFlight reads dtfc_http_requests_in_flight, less the request reading it.
func inFlight(t *testing.T, hc *http.Client, url string) int {
	t.Helper()
	resp, body := h2Do(t, hc, http.MethodGet, url+"/metrics", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "dtfc_http_requests_in_flight "); ok {
			n, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return int(n) - 1
		}
	}
	require.FailNow(t, "no dtfc_http_requests_in_flight in /metrics")
	return 0
}

// TestHTTP2Streams: a node advertises at most 100 concurrent streams per
// HTTP/2 connection (and its header list limit) in its SETTINGS, and
// holds to it: with 100 uploads in flight on one connection, the 101st
// stream is reset, not served; once one ends, a new one is served.
func TestHTTP2Streams(t *testing.T) {
	const maxStreams = 100
	s := startTLSServer(t, "--max-uploads-per-client", "-1")
	metrics := s.client(t, false)
	c := dialH2(t, s)
	authority := strings.TrimPrefix(s.url, "https://")

	waitUntil(t, "the server's SETTINGS", func() bool {
		settings, _, _, err := c.state()
		require.NoError(t, err)
		return settings != nil
	})
	settings, _, _, _ := c.state()
	assert.EqualValues(t, maxStreams, settings[settingMaxConcurrentStreams], "SETTINGS_MAX_CONCURRENT_STREAMS")
	// 8 KiB, the server's backstop above it (server.NetHTTPMaxHeaderBytes),
	// and net/http's HTTP/2 allowance of 320 bytes.
	assert.EqualValues(t, 8<<10+4096+320, settings[settingMaxHeaderListSize], "SETTINGS_MAX_HEADER_LIST_SIZE")

	for i := range maxStreams {
		c.postHeaders(t, authority, uint32(2*i+1))
	}
	waitUntil(t, "100 uploads in flight", func() bool { return inFlight(t, metrics, s.url) == maxStreams })
	_, resets, _, err := c.state()
	require.NoError(t, err)
	require.Empty(t, resets, "a stream within the limit was reset")

	over := uint32(2*maxStreams + 1)
	c.postHeaders(t, authority, over)
	waitUntil(t, "the 101st stream reset", func() bool {
		_, resets, _, err := c.state()
		require.NoError(t, err)
		_, ok := resets[over]
		return ok
	})
	_, resets, goaway, _ := c.state()
	assert.Len(t, resets, 1, "only the stream over the limit was reset: %v", resets)
	assert.False(t, goaway, "the connection stays")
	t.Logf("stream %d reset with error code %d", over, resets[over])
	assert.Equal(t, maxStreams, inFlight(t, metrics, s.url), "the 101st upload never ran")

	// The client gives one up (RST_STREAM, CANCEL): a new stream is served.
	require.NoError(t, c.write(frameRSTStream, 0, 1, []byte{0, 0, 0, 8}))
	waitUntil(t, "the cancelled upload ends", func() bool { return inFlight(t, metrics, s.url) == maxStreams-1 })
	c.postHeaders(t, authority, over+2)
	waitUntil(t, "a new stream served", func() bool { return inFlight(t, metrics, s.url) == maxStreams })
	_, resets, _, err = c.state()
	require.NoError(t, err)
	_, reset := resets[over+2]
	assert.False(t, reset, "the new stream was reset")
}
