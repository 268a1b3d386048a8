package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dtfc/dtfc"
)

// FastHits answers the plainest requests of all, a keep-alive GET of a
// blob this node holds, without net/http: net/http's response path alone
// serves 64 KiB hits at about half of nginx's rate on loopback, and most
// of that is its per-request work, not the bytes (README, Performance).
//
// It sits in front of net/http as its listener. It reads each
// connection's requests itself and answers one only if everything about
// it is plain: the request line "GET /<128 lowercase hex digits>
// HTTP/1.1"; no field but Host (exactly one), User-Agent, Accept,
// Accept-Language and Accept-Encoding, each with plain visible ASCII; a
// head of CRLF lines, within max_header_bytes and the buffer; a node
// with no read token and no CORS origins; an ID not denied, whose record
// is live and whose file is here. It answers
// with the headers net/http's path writes, byte for byte but the Date,
// counts the request in the same metrics, and sends the file with
// sendfile. At the first request it does not take, it hands the
// connection, with every byte read and not answered, to net/http for
// good: so whatever it does not understand, net/http answers exactly as
// before.
type FastHits struct {
	net.Listener
	s    *Server
	opts FastHitsOptions

	handed chan net.Conn // to net/http's Accept
	failed chan error    // the listener's own Accept failed for good
	done   chan struct{} // closed by Close

	answered atomic.Int64 // requests answered here

	head    *blobHead
	observe prometheus.Observer // the requests metric of a 200 to a GET of /{id}

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool // connections served here: true while answering
}

// Answered is how many requests were answered here rather than by
// net/http.
func (f *FastHits) Answered() int64 { return f.answered.Load() }

// FastHitsOptions are the timeouts net/http would apply to the same
// connections.
type FastHitsOptions struct {
	// ReadHeaderTimeout bounds the reading of a request head once its
	// first byte came.
	ReadHeaderTimeout time.Duration
	// IdleTimeout bounds the wait for the next request.
	IdleTimeout time.Duration
}

// fastHead is the largest request head FastHits reads before handing
// the connection over (its buffer).
const fastHead = 4096

// FastHits wraps ln, a plain TCP listener (never a TLS one), for
// http.Server.Serve. Call Cut after http.Server.Close.
func (s *Server) FastHits(ln net.Listener, opts FastHitsOptions) *FastHits {
	f := &FastHits{Listener: ln, s: s, opts: opts,
		handed: make(chan net.Conn), failed: make(chan error, 1), done: make(chan struct{}),
		conns: map[net.Conn]bool{}, head: newBlobHead(),
		observe: s.metrics.requests.WithLabelValues("/{id}", http.MethodGet, "200")}
	go f.acceptLoop()
	return f
}

func (f *FastHits) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := f.Listener.Accept()
		if err != nil {
			select {
			case <-f.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				f.failed <- err
				return
			}
			// Out of file descriptors and the like: retry, backing off
			// as net/http's Serve does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go f.serve(c)
	}
}

// Accept returns the connections handed over to net/http.
func (f *FastHits) Accept() (net.Conn, error) {
	select {
	case c := <-f.handed:
		return c, nil
	case err := <-f.failed:
		f.failed <- err
		return nil, err
	case <-f.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, and closes the connections waiting for a
// request; one being answered is closed once its answer is sent
// (http.Server.Shutdown calls Close).
func (f *FastHits) Close() error {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		close(f.done)
		for c, busy := range f.conns {
			if !busy {
				c.Close()
			}
		}
	}
	f.mu.Unlock()
	return f.Listener.Close()
}

// Cut closes every connection served here, answering or not: the end of
// the shutdown's grace, with http.Server.Close.
func (f *FastHits) Cut() {
	f.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

// Wait waits, after Close, until no answer is in flight here, or ctx
// ends (its error): then Cut what remains.
func (f *FastHits) Wait(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		f.mu.Lock()
		busy := slices.Contains(slices.Collect(maps.Values(f.conns)), true)
		f.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// state records whether c is answering (busy) or waiting; false once
// closing, when c must be closed.
func (f *FastHits) state(c net.Conn, busy bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = busy
	if busy {
		// Under mu, so that no request enters once Close began: the
		// shutdown's Server.Wait counts it.
		f.s.flight.Add(1)
	}
	return true
}

func (f *FastHits) forget(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *FastHits) serve(c net.Conn) {
	handed := false
	defer func() {
		if !handed {
			f.forget(c)
			c.Close()
		}
	}()
	br := bufio.NewReaderSize(c, fastHead)
	var out []byte
	// The first request must come within ReadHeaderTimeout, the next
	// ones after IdleTimeout at most, as net/http has it.
	wait := f.opts.ReadHeaderTimeout
	for {
		if !f.state(c, false) {
			return
		}
		c.SetReadDeadline(deadline(wait))
		wait = f.opts.IdleTimeout
		if _, err := br.Peek(1); err != nil {
			return
		}
		c.SetReadDeadline(deadline(f.opts.ReadHeaderTimeout))
		n, id, err := readPlainHead(br, f.s.cfg.MaxHeaderBytes)
		if errors.Is(err, errNotPlain) {
			handed = true
			f.handOver(c, br)
			return
		}
		if err != nil {
			// Cut or timed out in the middle of a head: net/http closes
			// such a connection too.
			return
		}
		c.SetReadDeadline(time.Time{})
		if !f.state(c, true) {
			return
		}
		taken, err := f.answer(c, br, n, id, &out)
		f.s.flight.Done()
		if !taken {
			handed = true
			f.handOver(c, br)
			return
		}
		if err != nil {
			return
		}
	}
}

func deadline(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// handOver gives c, with what br holds, to net/http.
func (f *FastHits) handOver(c net.Conn, br *bufio.Reader) {
	f.forget(c)
	c.SetReadDeadline(time.Time{})
	hc := &handedConn{Conn: c, br: br}
	select {
	case f.handed <- hc:
	case <-f.done:
		c.Close()
	}
}

// handedConn is a connection handed to net/http with the bytes already
// read from it. It keeps the methods net/http looks for on a TCP
// connection (ReadFrom for sendfile, CloseWrite for a clean close).
type handedConn struct {
	net.Conn
	br *bufio.Reader
}

func (h *handedConn) Read(p []byte) (int, error) { return h.br.Read(p) }

func (h *handedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := h.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(h.Conn, r)
}

func (h *handedConn) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// errNotPlain means the request is not one FastHits answers.
var errNotPlain = errors.New("not a plain hit")

// plainFields are the request fields FastHits accepts, lower case.
var plainFields = []string{"host", "user-agent", "accept", "accept-language", "accept-encoding"}

// readPlainHead reads a whole request head from br without consuming it
// and returns its length and the ID, or errNotPlain. maxHead is
// max_header_bytes (0: none), counted as limitHeader counts it.
func readPlainHead(br *bufio.Reader, maxHead int) (int, dtfc.ID, error) {
	var head []byte
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			head = buf[:i+4]
			break
		}
		if bareLF(buf) || len(buf) >= fastHead {
			return 0, dtfc.ID{}, errNotPlain
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return 0, dtfc.ID{}, err
		}
	}
	if bareLF(head) {
		return 0, dtfc.ID{}, errNotPlain
	}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	target, ok := bytes.CutPrefix(line, []byte("GET /"))
	if !ok {
		return 0, dtfc.ID{}, errNotPlain
	}
	hexID, ok := bytes.CutSuffix(target, []byte(" HTTP/1.1"))
	if !ok || len(hexID) != 2*len(dtfc.ID{}) || !lowerHex(hexID) {
		return 0, dtfc.ID{}, errNotPlain
	}
	id, err := dtfc.ParseID(string(hexID))
	if err != nil {
		return 0, dtfc.ID{}, errNotPlain
	}
	// The size limitHeader counts: "Name: value\r\n" per field.
	size := len(line) + 2 + 2
	hosts := 0
	rest = rest[:len(rest)-2] // the blank line
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || !plainName(name) {
			return 0, dtfc.ID{}, errNotPlain
		}
		value = bytes.Trim(value, " \t")
		if !plainValue(value) {
			return 0, dtfc.ID{}, errNotPlain
		}
		if bytes.EqualFold(name, []byte("host")) {
			hosts++
			if !plainHost(value) {
				return 0, dtfc.ID{}, errNotPlain
			}
		}
		size += len(name) + 2 + len(value) + 2
	}
	if hosts != 1 || (maxHead > 0 && size > maxHead) {
		return 0, dtfc.ID{}, errNotPlain
	}
	return len(head), id, nil
}

// bareLF reports an LF not preceded by CR: a head net/http reads line
// by line, which FastHits leaves to it.
func bareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

func lowerHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// plainName: one of plainFields, in any case, nothing around it.
func plainName(b []byte) bool {
	return slices.ContainsFunc(plainFields, func(f string) bool { return bytes.EqualFold(b, []byte(f)) })
}

// plainValue: visible ASCII and inner spaces only.
func plainValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' || c > '~' {
			return false
		}
	}
	return true
}

// plainHost: a host name, IPv4 or bracketed IPv6 address, and a port.
func plainHost(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// answer serves id if it is a hit this node can answer here; false (and
// nothing read or written) if not. The request head is n bytes of br.
func (f *FastHits) answer(c net.Conn, br *bufio.Reader, n int, id dtfc.ID, out *[]byte) (bool, error) {
	s := f.s
	if len(s.tokens.Load().read) > 0 || len(s.cfg.CORSOrigins) > 0 {
		return false, nil
	}
	if s.checkDenied(id, false) != nil {
		return false, nil
	}
	st, small, b, err := s.store.ReadOrOpen(id, smallBlob)
	if err != nil || st.Deleted {
		return false, nil
	}
	if b != nil {
		defer b.Close()
	}
	start := time.Now()
	w, ok := f.head.append((*out)[:0], st, start)
	if !ok {
		return false, nil // net/http would clean the type: its path answers
	}
	br.Discard(n)
	f.answered.Add(1) // before the answer, which the client may read at once
	s.metrics.inFlight.Inc()
	defer s.metrics.inFlight.Dec()
	if small != nil {
		w = append(w, small...)
	}
	*out = w
	if b == nil {
		_, err = c.Write(w)
	} else {
		// The head waits for the body (MSG_MORE), which sendfile sends
		// (TCPConn.ReadFrom, limited to the recorded size).
		err = writeMore(c, w)
		if err == nil {
			var sent int64
			sent, err = io.Copy(c, io.LimitReader(b.File, st.Size))
			if err == nil && sent != st.Size {
				err = io.ErrUnexpectedEOF // the client must see a broken answer
			}
		}
	}
	if err == nil {
		s.metrics.outLocal.Add(float64(st.Size))
	}
	f.observe.Observe(time.Since(start).Seconds())
	return true, err
}
