package cluster

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// CutAfter makes the next answer body on the link from -> to (node to
// answering node from) that starts after the call and is longer than n
// bytes break off after exactly n bytes: the link passes n bytes, then
// aborts the connection, so node from reads a short body and an error
// (unexpected EOF, or a reset), never what looks like a whole answer. It
// models a peer or a path that dies in the middle of an answer. An answer
// of unknown length is cut only if more than n bytes come. It fires once:
// the link is normal again after, until the next CutAfter or StallAfter,
// which replaces one not fired yet. Heal and HealAll disarm it.
func (c *Cluster) CutAfter(from, to int, n int64) {
	c.t.Helper()
	c.link(from, to).corr.arm(&cutShot{n: max(n, 0)})
}

// StallAfter is CutAfter with a peer that stops answering without closing:
// the link passes n bytes of the answer, then nothing more, and keeps the
// connection open until the link is healed (Heal, HealAll) or the cluster
// cleaned up, when the stalled answer is aborted. Node from waits for the
// rest as long as its own timeouts let it.
func (c *Cluster) StallAfter(from, to int, n int64) {
	c.t.Helper()
	c.link(from, to).corr.arm(&cutShot{n: max(n, 0), stall: true})
}

// Carried returns how many bytes of answer bodies (node to answering node
// from) the link from -> to has passed on so far, answers cut short
// included: the traffic node from was sent, not the answers it got whole.
func (c *Cluster) Carried(from, to int) int64 {
	c.t.Helper()
	return c.link(from, to).corr.carried.Load()
}

// CutRequestAfter is CutAfter for a request body: the next request body
// on the link from -> to (node from to node to) that starts after the
// call and is longer than n bytes breaks off after n bytes: node to reads
// a short body (its connection closes before the length it was told),
// and node from sees its request fail, never an answer. At most n bytes
// reach node to: exactly n when the proxy's transport has flushed them
// (it does when the request expected 100 Continue), else up to its 4 KiB
// write buffer fewer. It fires once, like CutAfter, and is independent of
// it; Heal and HealAll disarm it.
func (c *Cluster) CutRequestAfter(from, to int, n int64) {
	c.t.Helper()
	c.link(from, to).corr.reqShot.Store(&cutShot{n: max(n, 0)})
}

// CarriedRequests returns how many bytes of request bodies (node from to
// node to) the link from -> to has passed on so far, bodies cut short
// included: the traffic node from sent that went through, as Carried
// counts that of answers.
func (c *Cluster) CarriedRequests(from, to int) int64 {
	c.t.Helper()
	return c.link(from, to).corr.carriedReq.Load()
}

// cutShot is an armed CutAfter (or StallAfter, if stall). It is taken by
// the first answer to prove longer than n bytes that started while it was
// armed, compared by identity: a shot healed away or rearmed is not
// taken any more by answers that started before.
type cutShot struct {
	n     int64
	stall bool
}

// cutState is the corruptor's part for CutAfter, StallAfter and Carried.
type cutState struct {
	shot       atomic.Pointer[cutShot] // armed, or nil
	carried    atomic.Int64            // answer bytes written to clients
	reqShot    atomic.Pointer[cutShot] // CutRequestAfter armed, or nil
	carriedReq atomic.Int64            // request bytes passed on to the node

	healMu sync.Mutex
	healed chan struct{} // closed by uncut: the stalled answers end; nil: none made yet
}

var (
	errCut     = errors.New("cluster: answer cut (CutAfter)")
	errStalled = errors.New("cluster: stalled answer ended (StallAfter)")
	errCutReq  = errors.New("cluster: request cut (CutRequestAfter)")
)

// arm arms s, replacing a shot not taken yet.
func (c *corruptor) arm(s *cutShot) { c.shot.Store(s) }

// uncut disarms the shot and ends the answers stalled so far (Heal and
// HealAll do).
func (c *corruptor) uncut() {
	c.shot.Store(nil)
	c.reqShot.Store(nil)
	c.healMu.Lock()
	defer c.healMu.Unlock()
	if c.healed != nil {
		close(c.healed)
		c.healed = nil
	}
}

// healing returns the channel the next uncut closes.
func (c *corruptor) healing() <-chan struct{} {
	c.healMu.Lock()
	defer c.healMu.Unlock()
	if c.healed == nil {
		c.healed = make(chan struct{})
	}
	return c.healed
}

// cutAnswer makes res's body subject to the armed shot, if any and if the
// body may be longer than the shot's n bytes.
func (c *corruptor) cutAnswer(res *http.Response) {
	s := c.shot.Load()
	if s == nil || res.Body == nil || res.Body == http.NoBody ||
		(res.ContentLength >= 0 && res.ContentLength <= s.n) {
		return
	}
	res.Body = &cutReader{
		rc: res.Body, c: c, shot: s, left: s.n,
		ctx: res.Request.Context(), healed: c.healing(),
	}
}

// cutReader passes an answer's first shot.n bytes on, then, once a further
// byte came and the shot is still armed, takes the shot (no other answer
// can then) and cuts or stalls. Otherwise it passes the whole answer.
type cutReader struct {
	rc     io.ReadCloser
	c      *corruptor
	shot   *cutShot // nil once the answer passes whole
	left   int64    // bytes to pass before the cut
	ctx    context.Context
	healed <-chan struct{}
	err    error // once cut
}

func (r *cutReader) Read(p []byte) (int, error) {
	switch {
	case r.err != nil:
		return 0, r.err
	case r.shot == nil:
		return r.rc.Read(p)
	case r.left > 0:
		n, err := r.rc.Read(p[:min(int64(len(p)), r.left)])
		r.left -= int64(n)
		return n, err
	}
	n, err := r.rc.Read(p)
	if n == 0 {
		return 0, err // the end after exactly n bytes: not longer
	}
	if !r.c.shot.CompareAndSwap(r.shot, nil) {
		r.shot = nil // taken by another answer, healed or rearmed
		return n, err
	}
	// The n bytes went on: copyResponse flushed them as they came.
	r.err = errCut
	if r.shot.stall {
		select {
		case <-r.healed:
		case <-r.c.closing:
		case <-r.ctx.Done():
		}
		r.err = errStalled
	}
	return 0, r.err
}

func (r *cutReader) Close() error { return r.rc.Close() }

// cutRequest makes a request body subject to the armed CutRequestAfter,
// if any and if the body may be longer than its n bytes, and counts what
// of it is passed on (CarriedRequests).
func (c *corruptor) cutRequest(body io.ReadCloser, length int64) io.ReadCloser {
	r := &requestReader{rc: body, c: c}
	if s := c.reqShot.Load(); s != nil && (length < 0 || length > s.n) {
		r.shot, r.left = s, s.n
	}
	return r
}

// requestReader passes a request body on, counting it; with a shot, its
// first shot.n bytes, then, once a further byte came and the shot is
// still armed, takes it and fails: the proxy's transport drops its
// connection to the node, and the proxy the one to the sender.
type requestReader struct {
	rc   io.ReadCloser
	c    *corruptor
	shot *cutShot // nil: the body passes whole
	left int64
	err  error // once cut
}

func (r *requestReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.shot != nil && r.left > 0 {
		p = p[:min(int64(len(p)), r.left)]
	}
	if r.shot != nil && r.left == 0 {
		var one [1]byte
		n, err := r.rc.Read(one[:])
		if n == 0 {
			return 0, err // the end after exactly n bytes: not longer
		}
		if !r.c.reqShot.CompareAndSwap(r.shot, nil) {
			r.shot = nil // taken by another request, healed or rearmed
			p[0] = one[0]
			r.c.carriedReq.Add(1)
			return 1, err
		}
		r.err = errCutReq
		return 0, r.err
	}
	n, err := r.rc.Read(p)
	r.left -= int64(n)
	r.c.carriedReq.Add(int64(n))
	return n, err
}

func (r *requestReader) Close() error { return r.rc.Close() }

// serveAnswers wraps the corruptor's proxy so that its answers go through
// an answerWriter.
func (c *corruptor) serveAnswers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(answerWriter{ResponseWriter: w, carried: &c.carried}, r)
	})
}

// answerWriter counts the answer bytes the proxy passes to the client
// (Carried), before they go, so that a client that got them sees them
// counted. It also sends an answer's header as soon as the proxy wrote
// it: an answer cut before its first byte (CutAfter with n = 0) then
// reaches the client as a header and a broken body, not as a connection
// closed before any answer, which Go's transport may retry unseen.
type answerWriter struct {
	http.ResponseWriter
	carried *atomic.Int64
}

func (w answerWriter) WriteHeader(code int) {
	w.ResponseWriter.WriteHeader(code)
	if code >= 200 { // a 1xx is sent at once, and more headers follow it
		w.Flush()
	}
}

func (w answerWriter) Write(p []byte) (int, error) {
	w.carried.Add(int64(len(p)))
	n, err := w.ResponseWriter.Write(p)
	w.carried.Add(int64(n - len(p)))
	return n, err
}

func (w answerWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the server's writer.
func (w answerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
