package cluster

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// corruptMin is the body size from which the corruptor flips a byte: a
// body must be larger than this.
const corruptMin = 64

// corruptor is a reverse proxy in front of one node that, while switched
// on, flips one byte (XOR 0xFF) in every request and response body larger
// than corruptMin bytes. It streams: a body is never buffered, the byte is
// flipped as it passes.
type corruptor struct {
	on        atomic.Bool
	nextBlob  atomic.Bool // CorruptNextBlob
	corrupted atomic.Int64
	ln        net.Listener
	srv       *http.Server
	tr        *http.Transport
	done      chan struct{}
	closing   chan struct{} // closed by close: delays end at once

	// delay (nanoseconds) and rate (bytes per second, 0: unlimited) are
	// the Delay and Throttle faults (slow.go).
	delay atomic.Int64
	rate  atomic.Int64

	cutState // CutAfter, StallAfter and Carried (cut.go)
}

// newCorruptor starts a corruptor serving on ln, forwarding to target (a
// node's URL).
func newCorruptor(target *url.URL, ln net.Listener) *corruptor {
	c := &corruptor{
		ln:      ln,
		done:    make(chan struct{}),
		closing: make(chan struct{}),
		tr: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			DisableCompression:    true,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       30 * time.Second,
			ResponseHeaderTimeout: 0, // the node may fsync a large body first
			// A request that expects 100 Continue (a large push) waits
			// for the node's, as on a TCP path: its body is not taken
			// from the sender before the node asked for it, so a
			// refusal costs no body bytes through the proxy either.
			ExpectContinueTimeout: time.Second,
		},
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// Keep the Host the node on the other side asked for, and add
			// no X-Forwarded-*: the proxy is to be as transparent as the
			// TCP path through toxiproxy in front of it.
			pr.Out.Host = pr.In.Host
			if body := pr.Out.Body; body != nil && body != http.NoBody && c.on.Load() {
				if at, ok := flipOffset(pr.Out.ContentLength); ok {
					pr.Out.Body = &flipReader{rc: body, at: at, flipped: c.flipped}
				}
			}
			if body := pr.Out.Body; body != nil && body != http.NoBody {
				pr.Out.Body = c.cutRequest(body, pr.Out.ContentLength)
			}
			c.slow(pr.In.Context(), &pr.Out.Body)
		},
		ModifyResponse: func(res *http.Response) error {
			if res.Body != nil && res.Body != http.NoBody {
				at, ok := flipOffset(res.ContentLength)
				if ok && (c.on.Load() || (blobAnswer(res) && c.nextBlob.CompareAndSwap(true, false))) {
					res.Body = &flipReader{rc: res.Body, at: at, flipped: c.flipped}
				}
			}
			c.cutAnswer(res)
			c.slow(res.Request.Context(), &res.Body)
			return nil
		},
		Transport:     c.tr,
		FlushInterval: -1, // pass every write on at once, like a TCP path
		ErrorLog:      log.New(io.Discard, "", 0),
		// The upstream failed before answering (node down, connection
		// reset): drop the client's connection rather than answer 502, so
		// the node on the other side sees what it would see on a direct
		// link, a failed connection.
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			panic(http.ErrAbortHandler)
		},
	}
	c.srv = &http.Server{
		Handler:           c.serveAnswers(rp),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(c.done)
		c.srv.Serve(ln) // returns ErrServerClosed once close is called
	}()
	return c
}

// blobAnswer tells whether res carries a blob's bytes (or a range of
// them) from one node to another.
func blobAnswer(res *http.Response) bool {
	return res.Request.Method == http.MethodGet && strings.HasPrefix(res.Request.URL.Path, "/_internal/blobs/") &&
		(res.StatusCode == http.StatusOK || res.StatusCode == http.StatusPartialContent)
}

// addr is the host:port the corruptor listens on.
func (c *corruptor) addr() string { return c.ln.Addr().String() }

func (c *corruptor) flipped() { c.corrupted.Add(1) }

// close stops the corruptor and cuts every connection through it.
func (c *corruptor) close() {
	close(c.closing)
	c.srv.Close()
	<-c.done
	c.tr.CloseIdleConnections()
}

// flipOffset decides where in a body of the given length (-1: unknown) to
// flip a byte: in the middle of a body of known length, at offset
// corruptMin in one of unknown length (so that exactly the bodies larger
// than corruptMin bytes are hit).
func flipOffset(length int64) (int64, bool) {
	switch {
	case length < 0:
		return corruptMin, true
	case length > corruptMin:
		return length / 2, true
	}
	return 0, false
}

// flipReader passes a body on, flipping the byte at offset at when it goes
// by.
type flipReader struct {
	rc      io.ReadCloser
	at      int64
	pos     int64
	flipped func()
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.rc.Read(p)
	// pos only grows, so the byte at offset at is flipped at most once.
	if f.pos <= f.at && f.at < f.pos+int64(n) {
		p[f.at-f.pos] ^= 0xFF
		f.flipped()
	}
	f.pos += int64(n)
	return n, err
}

func (f *flipReader) Close() error { return f.rc.Close() }
