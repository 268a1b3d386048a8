package peer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
)

// This file is the whole node-to-node protocol as both sides speak it:
// routes, headers, the request and answer types, the limits on what a
// peer may send, and the client side (httpNode). The server side is
// Cluster.InternalHandler (internal.go, deny.go), which uses the same
// types and constants.

// Routes of the node-to-node protocol, under InternalPrefix (where
// Cluster.InternalHandler is mounted).
const (
	InternalPrefix = "/_internal"
	routeBlob      = "/blobs/" // + ID: GET, HEAD, PUT
	routeBlobs     = "/blobs"  // POST: many small blobs at once (PutBatch)
	routeState     = "/state/" // + ID: GET
	routeStates    = "/states" // ?prefix=<hex>: GET, one state per line
	routeDigests   = "/digests"
	routeLookup    = "/lookup"
	routeDeny      = "/deny"
	routeResynced  = "/resynced"
	routeChanges   = "/changes"
	routeMembers   = "/members" // POST: exchange membership records
)

// Headers of the node-to-node protocol.
const (
	// HeaderSecret carries the cluster secret on node-to-node requests.
	HeaderSecret = "X-Dtfc-Cluster-Secret"
	// HeaderFrom names the node identity of the requesting node.
	HeaderFrom = "X-Dtfc-From"
	// HeaderRemoved marks an answer refusing a node removed from the
	// cluster: when it was removed.
	HeaderRemoved = "X-Dtfc-Removed"
	// HeaderFetch, on a request for a blob's bytes, says why: "repair"
	// for anti-entropy's pulls, which the source does not count as a
	// read in its eviction order (a client's miss elsewhere does).
	HeaderFetch = "X-Dtfc-Fetch"
	// HeaderNode names the node identity of the answering node.
	HeaderNode = "X-Dtfc-Node"
	// HeaderState carries a dtfc.State as base64url JSON.
	HeaderState = "X-Dtfc-State"
	// HeaderRole names the answering node's role ("replica" or "cache"):
	// what a peer really is wins over what a peer list says of it.
	HeaderRole = "X-Dtfc-Role"
	// HeaderForgotten, on a 404 of GET /_internal/state/{id}, carries the
	// tombstone of the ID the node forgot lately (as HeaderState does).
	HeaderForgotten = "X-Dtfc-Forgotten"
	// HeaderExpired, on a request or an answer between two nodes, tells
	// the node it is addressed to that the sender forgot deletes (or
	// lifts) it never acknowledged, and since when (RFC 3339 with
	// milliseconds): the addressee must resync before it offers anything.
	HeaderExpired = "X-Dtfc-Expired"
	// HeaderMarks, on every request and answer between two nodes, lists
	// the identities of the nodes the sender marked expired (comma
	// separated; empty: none): a node takes nothing from a node another
	// peer marked (heardmarks.go).
	HeaderMarks = "X-Dtfc-Marks"
	// HeaderResume, on a PUT of a blob, says the pusher can send the
	// blob from where the bytes its peer kept of it end: the peer may
	// then refuse the PUT, before its body, with 409 and
	// HeaderResumeFrom. A pusher from before it sends it all, and is
	// never refused so.
	HeaderResume = "X-Dtfc-Resume"
	// HeaderResumeFrom, on the 409 answering a PUT with HeaderResume, is
	// how many bytes of the blob the answering node holds from a cut
	// transfer: the body is to start there (0: send it all).
	HeaderResumeFrom = "X-Dtfc-Resume-From"
	// HeaderOffset, on a PUT with HeaderResume, says the body is the blob
	// from this byte on (a decimal count, what HeaderResumeFrom said).
	HeaderOffset = "X-Dtfc-Offset"
)

// maxPutResumes is how many 409s with HeaderResumeFrom a push follows
// before it fails (the peer's kept bytes changed under it: a transfer
// there moved on or was dropped); the pusher retries later.
const maxPutResumes = 3

// parseOffset reads HeaderOffset or HeaderResumeFrom: a decimal count of
// bytes, "" for 0.
func parseOffset(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	if len(v) > 19 || strings.TrimLeft(v, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a byte count", v)
	}
	return strconv.ParseInt(v, 10, 64)
}

// errPeerNotFound: the peer answered 404.
var errPeerNotFound = errors.New("peer does not hold it")

// errPeerResyncing: the peer is resyncing and offers none of its states.
var errPeerResyncing = errors.New("peer is resyncing")

// errExpired: the peer refused what this node offered because it marked
// this node expired (it forgot deletes this node never acknowledged).
var errExpired = errors.New("this node is expired at the peer and must resync first")

// HeaderResyncing marks the 503 of a node that is resyncing.
const HeaderResyncing = "X-Dtfc-Resyncing"

// stallTimeout cuts off a node-to-node exchange in which nothing moves
// for this long: no byte of the request body taken, no answer (a peer
// working on a long request sends 102 Processing every heartbeat), no
// byte of the answer's body. A peer that stops answering without closing
// its connection is given up on after this, not after minutes.
var stallTimeout = 15 * time.Second

// HeaderExpired carries a mark's horizon as a decimal clock reading.
func formatExpired(h dtfc.Timestamp) string { return strconv.FormatUint(uint64(h), 10) }

func parseExpired(v string) (dtfc.Timestamp, bool) {
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return dtfc.Timestamp(n), err == nil && n != 0
}

// Limits on node-to-node requests.
const (
	maxChanges     = 10000
	maxJSONBody    = 32 << 20
	internalIdle   = 60 * time.Second
	maxStatePrefix = 8
)

// Limits on a batch of blobs (POST /_internal/blobs): a peer refuses
// more (400). Blobs above maxBatchBlobSize go one by one (PUT), where a
// batch would save nothing: their time is their bytes', not their syncs'.
const (
	maxBatchBlobs    = 256
	maxBatchBlobSize = 64 << 10
	maxBatchBody     = 8 << 20
	// maxFrameHead bounds a frame's state line: a state within the
	// bounds below takes at most about 5 KB in base64url JSON.
	maxFrameHead = 8 << 10
)

// Bounds on what a state may carry (the same as on uploads).
const (
	maxStateText = 255
	maxNodeLen   = 64
)

// validState checks a state received from a peer.
// emptyID is the ID of the empty blob.
var emptyID = dtfc.Sum(nil)

func validState(st dtfc.State) error {
	switch {
	case st.ID.IsZero(), st.Clock == 0:
		return errors.New("a state needs an ID and a clock")
	case !st.Deleted && st.Size < 0:
		return errors.New("negative size")
	case !st.Deleted && st.Size == 0 && st.ID != emptyID:
		// Nothing else hashes to the empty blob's ID: a peer saying so
		// lies (an empty answer has no last byte to hold back).
		return errors.New("size 0 for a blob that is not empty")
	case len(st.ContentType) > maxStateText, len(st.Filename) > maxStateText:
		return fmt.Errorf("content type or filename longer than %d bytes", maxStateText)
	case st.Node == "", len(st.Node) > maxNodeLen:
		return errors.New("a state needs a node identity of at most 64 bytes")
	}
	return nil
}

// bounded is st as it may leave this node: a content type or filename
// longer than peers accept (recorded before uploads were bounded) is
// dropped, so that a peer never refuses the state for it, and every
// reader serves its own default instead.
func bounded(st dtfc.State) dtfc.State {
	if len(st.ContentType) > maxStateText {
		st.ContentType = ""
	}
	if len(st.Filename) > maxStateText {
		st.Filename = ""
	}
	return st
}

// NodeState is a peer's answer about one ID (Node.Stat).
type NodeState struct {
	State dtfc.State
	// Held: the peer holds the bytes.
	Held bool
	// Forgotten: the peer has no record, but State is a tombstone of the
	// ID it forgot lately.
	Forgotten bool
}

type stateAnswer struct {
	State dtfc.State `json:"state"`
	// Held is true if the node holds the blob's bytes.
	Held bool `json:"held"`
	// Evicted is true if the node is a tier that evicted the bytes to
	// its archive (for operators and tests; nodes do not read it).
	Evicted bool `json:"evicted,omitempty"`
}

type changesRequest struct {
	Changes []dtfc.State     `json:"changes"`
	Deny    []blobstore.Deny `json:"deny,omitempty"`
}

// Results of an offered change.
const (
	resultOK    = "ok"    // applied, or older than what the peer has
	resultNeed  = "need"  // send the bytes
	resultAhead = "ahead" // refused: its clock is too far ahead of the peer's
	resultCache = "cache" // the peer is a cache: an upload is not kept
)

type changesAnswer struct {
	// Results has one entry per change, DenyResults one per deny entry.
	Results     []string `json:"results"`
	DenyResults []string `json:"deny_results,omitempty"`
	// Blocked are the peer's blocks of the uploads it ignored because
	// their ID is blocked there ("ok" in Results): the pusher applies
	// them before its cursor passes the uploads, so that an upload
	// waiting for ?replicas=N does not count a peer that dropped it.
	// Older nodes neither send nor read it.
	Blocked []blobstore.Deny `json:"blocked,omitempty"`
}

// batchBlob is one blob of a batch put: its state and its bytes, the
// State.Size first bytes of Body.
type batchBlob struct {
	State dtfc.State
	Body  io.Reader
}

// batchContentType is the type of a batch put's body: one frame per
// blob, its state as HeaderState carries it (base64url JSON), a newline,
// then exactly State.Size bytes.
const batchContentType = "application/x-dtfc-blobs"

// frameHead is the line that begins a blob's frame in a batch.
func frameHead(st dtfc.State) string { return encodeStateHeader(st) + "\n" }

// readFrameHead reads the state line of the next frame of a batch and
// checks the state as a PUT's is checked; io.EOF at the end of the body.
// A malformed frame is an *httpstatus.Error (400): the frames after it
// cannot be found.
func readFrameHead(br *bufio.Reader) (dtfc.State, error) {
	line, err := br.ReadSlice('\n')
	switch {
	case err == io.EOF && len(line) == 0:
		return dtfc.State{}, io.EOF
	case errors.Is(err, bufio.ErrBufferFull):
		return dtfc.State{}, httpstatus.Errorf(http.StatusBadRequest, "a frame's state line is longer than %d bytes", br.Size())
	case err == io.EOF:
		return dtfc.State{}, httpstatus.Errorf(http.StatusBadRequest, "the body ends inside a frame's state line")
	case err != nil:
		return dtfc.State{}, err
	}
	st, err := decodeStateHeader(string(line[:len(line)-1]))
	if err == nil {
		err = validState(st)
	}
	switch {
	case err != nil:
		return st, httpstatus.Errorf(http.StatusBadRequest, "bad frame: %v", err)
	case st.Deleted:
		return st, httpstatus.Errorf(http.StatusBadRequest, "bad frame: a tombstone has no bytes")
	case st.Size > maxBatchBlobSize:
		return st, httpstatus.Errorf(http.StatusBadRequest, "bad frame: %d bytes, more than the %d a batch takes of one blob", st.Size, maxBatchBlobSize)
	}
	return st, nil
}

// batchResult is a peer's result for one blob of a batch.
type batchResult struct {
	// Status is what a PUT of that blob alone would have been answered:
	// 201 (stored), 200 (the state recorded, or older than the peer's:
	// nothing to do) — both accept it — or an error status (Error says
	// why): refused, nothing stored.
	Status int    `json:"status"`
	Result string `json:"result,omitempty"` // "applied" or "stale", when accepted
	Error  string `json:"error,omitempty"`
}

// accepted reports whether the peer took the blob (or needs it no more).
func (r batchResult) accepted() bool {
	return r.Status == http.StatusOK || r.Status == http.StatusCreated
}

// batchAnswer answers a batch put: one result per blob, in its order.
type batchAnswer struct {
	Results []batchResult `json:"results"`
}

// errBatchUnsupported: the peer does not know the batch route (a dtfc
// from before it answers 404 or 405); it takes blobs one by one.
var errBatchUnsupported = errors.New("the peer takes no batch of blobs")

// digestsAnswer carries 256 range digests compactly: the sums as one hex
// string (256 × 32 bytes), the counts as numbers.
type digestsAnswer struct {
	Node   string `json:"node"`
	Synced bool   `json:"synced"`
	// Resyncing: the answering node holds states it may have to drop;
	// nothing may be imported from it.
	Resyncing bool `json:"resyncing,omitempty"`
	// Expired lists the node identities the answering node marked
	// expired: a resyncing node does not take their word against it.
	Expired []string `json:"expired,omitempty"`
	Sums    string   `json:"sums"`
	Counts  []uint64 `json:"counts"`
	// Deny digests the deny list (blobstore.DenyDigest).
	Deny string `json:"deny"`
}

func encodeDigests(node string, synced bool, d *[256]blobstore.Digest) digestsAnswer {
	sums := make([]byte, 0, 256*32)
	counts := make([]uint64, 256)
	for i := range d {
		sums = append(sums, d[i].Sum[:]...)
		counts[i] = d[i].Count
	}
	return digestsAnswer{Node: node, Synced: synced, Sums: hex.EncodeToString(sums), Counts: counts}
}

func (a *digestsAnswer) decode() ([256]blobstore.Digest, error) {
	var d [256]blobstore.Digest
	sums, err := hex.DecodeString(a.Sums)
	if err != nil || len(sums) != 256*32 || len(a.Counts) != 256 {
		return d, errors.New("malformed digests")
	}
	for i := range d {
		copy(d[i].Sum[:], sums[i*32:])
		d[i].Count = a.Counts[i]
	}
	return d, nil
}

// denyList is the answer of GET /_internal/deny: the whole deny list.
type denyList struct {
	Entries []blobstore.Deny `json:"entries"`
	// ForgottenLifts are the lifts the peer forgot lately (every peer
	// had them), which it remembers for the expiry: a node the peer
	// expired drops a block only on this word that it was lifted, not
	// because the peer lacks it. Older nodes send none.
	ForgottenLifts []blobstore.Deny `json:"forgotten_lifts,omitempty"`
}

type lookupRequest struct {
	IDs []dtfc.ID `json:"ids"`
}

type lookupAnswer struct {
	States []dtfc.State `json:"states"`
}

type resyncedRequest struct {
	Horizon dtfc.Timestamp `json:"horizon"`
}

// fetchRepair is HeaderFetch's value for anti-entropy's pulls.
const fetchRepair = "repair"

// repairFetchKey marks the context of a transfer that repairs (a pull),
// not a client's miss.
type repairFetchKey struct{}

// httpNode is the client side of the protocol: one peer over HTTP. It
// reports every exchange's outcome to the peer's remote (health, what the
// peer says of itself and of this node).
type httpNode struct {
	url    string
	hc     *http.Client
	secret string
	self   string  // this node's identity, sent as HeaderFrom
	r      *remote // told how each exchange went
}

// do sends a node-to-node request. Transport failures and 5xx answers count
// against the peer's health; any answer from it proves it is up. The
// exchange is cut off when nothing moves for stallTimeout (see there); the
// answer's body must be closed, which releases that watch.
func (n *httpNode) do(parent context.Context, method, path string, body io.Reader, hdr http.Header) (*http.Response, error) {
	ctx, cancel := context.WithCancel(parent)
	w := newStallWatch(cancel)
	if body != nil {
		body = &progressReader{r: body, w: w}
	}
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error { w.touch(); return nil },
	})
	req, err := http.NewRequestWithContext(ctx, method, n.url+InternalPrefix+path, body)
	if err != nil {
		w.stop()
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if pr, ok := body.(*progressReader); ok {
		switch l := pr.r.(type) {
		case interface{ Len() int64 }:
			req.ContentLength = l.Len()
		case interface{ Len() int }:
			req.ContentLength = int64(l.Len())
		}
	}
	if n.secret != "" {
		req.Header.Set(HeaderSecret, n.secret)
	}
	req.Header.Set(HeaderFrom, n.self)
	if n.r.notes != nil {
		req.Header.Set(HeaderMarks, n.r.notes.marksHeader())
		req.Header.Set(HeaderInstance, n.r.notes.instance())
	}
	if h := n.r.expiredHorizon(); h != 0 {
		req.Header.Set(HeaderExpired, formatExpired(h))
	}
	sent := time.Now()
	resp, err := n.hc.Do(req)
	if err == nil && n.r.notes != nil {
		if cerr := n.r.notes.checkAnswer(n.url, resp.Header, sent); cerr != nil {
			resp.Body.Close()
			w.stop()
			n.r.fail(cerr)
			return nil, cerr
		}
	}
	if err != nil {
		stalled := w.stop()
		switch {
		case stalled:
			err = fmt.Errorf("no progress for %v: %w", stallTimeout, err)
			n.r.fail(err)
		case parent.Err() == nil:
			n.r.fail(err)
		}
		return nil, fmt.Errorf("peer %s: %w", n.url, err)
	}
	w.touch()
	resp.Body = &progressBody{ReadCloser: resp.Body, w: w}
	if resp.StatusCode >= 500 {
		err := answerErr(n.url, resp)
		resp.Body.Close()
		if resp.Header.Get(HeaderResyncing) != "" {
			// Alive, but offering nothing for now.
			n.r.ok(resp.Header)
			return nil, fmt.Errorf("%w: %w", errPeerResyncing, err)
		}
		n.r.fail(err)
		return nil, err
	}
	n.r.ok(resp.Header)
	if resp.StatusCode == http.StatusConflict && resp.Header.Get(HeaderExpired) != "" {
		err := answerErr(n.url, resp)
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %w", errExpired, err)
	}
	return resp, nil
}

// stallWatch cancels an exchange when nothing moves for its limit
// (stallTimeout with a node).
type stallWatch struct {
	limit   time.Duration
	timer   *time.Timer
	cancel  context.CancelFunc
	mu      sync.Mutex
	fired   bool
	stopped bool
}

func newStallWatch(cancel context.CancelFunc) *stallWatch {
	return newStallWatchFor(cancel, stallTimeout)
}

func newStallWatchFor(cancel context.CancelFunc, limit time.Duration) *stallWatch {
	w := &stallWatch{cancel: cancel, limit: limit}
	w.timer = time.AfterFunc(limit, func() {
		w.mu.Lock()
		if !w.stopped {
			w.fired = true
		}
		w.mu.Unlock()
		cancel()
	})
	return w
}

func (w *stallWatch) touch() {
	w.mu.Lock()
	if !w.stopped && !w.fired {
		w.timer.Reset(w.limit)
	}
	w.mu.Unlock()
}

// stop ends the watch (and the exchange's context) and reports whether it
// had fired.
func (w *stallWatch) stop() bool {
	w.mu.Lock()
	w.stopped = true
	fired := w.fired
	w.mu.Unlock()
	w.timer.Stop()
	w.cancel()
	return fired
}

// progressReader is a request body whose reads count as progress.
type progressReader struct {
	r io.Reader
	w *stallWatch
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.w.touch()
	}
	return n, err
}

// progressBody is an answer's body whose reads count as progress; closing
// it ends the watch.
type progressBody struct {
	io.ReadCloser
	w *stallWatch
}

func (p *progressBody) Read(b []byte) (int, error) {
	n, err := p.ReadCloser.Read(b)
	if n > 0 {
		p.w.touch()
	}
	if err != nil && err != io.EOF && p.w.stop() {
		err = fmt.Errorf("no progress for %v: %w", p.w.limit, err)
	}
	return n, err
}

func (p *progressBody) Close() error {
	err := p.ReadCloser.Close()
	p.w.stop()
	return err
}

// answerErr reads a peer's JSON error answer.
func answerErr(url string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var e struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("peer %s: %w", url, errPeerNotFound)
	}
	return fmt.Errorf("peer %s: %s: %s", url, resp.Status, msg)
}

// getJSON GETs path and decodes the JSON answer into v.
func (n *httpNode) getJSON(ctx context.Context, path string, v any) error {
	return n.callJSON(ctx, http.MethodGet, path, nil, v)
}

func (n *httpNode) callJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	hdr := http.Header{}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
		hdr.Set("Content-Type", "application/json")
	}
	resp, err := n.do(ctx, method, path, body, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerErr(n.url, resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("peer %s: %s %s: decoding the answer: %w", n.url, method, path, err)
	}
	return nil
}

// Stat asks the peer for its state of id (GET /_internal/state/{id}):
// its record and whether it holds the bytes. A peer with no record
// answers errPeerNotFound — or, if it forgot a delete of id lately
// (HeaderForgotten), that tombstone with Forgotten set (and the error of
// a malformed one).
func (n *httpNode) Stat(ctx context.Context, id dtfc.ID) (NodeState, error) {
	resp, err := n.do(ctx, http.MethodGet, routeState+id.String(), nil, nil)
	if err != nil {
		return NodeState{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		if f := resp.Header.Get(HeaderForgotten); f != "" {
			st, err := decodeStateHeader(f)
			return NodeState{State: st, Forgotten: true}, err
		}
	}
	if resp.StatusCode != http.StatusOK {
		return NodeState{}, answerErr(n.url, resp)
	}
	var ans stateAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return NodeState{}, fmt.Errorf("peer %s: state of %s: %w", n.url, id, err)
	}
	return NodeState{State: ans.State, Held: ans.Held}, nil
}

// States streams the peer's states of every ID beginning with prefix to
// fn, in ID order (GET /_internal/states: one JSON object per line).
func (n *httpNode) States(ctx context.Context, prefix []byte, fn func(dtfc.State) error) error {
	resp, err := n.do(ctx, http.MethodGet, routeStates+"?prefix="+hex.EncodeToString(prefix), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerErr(n.url, resp)
	}
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for {
		var st dtfc.State
		if err := dec.Decode(&st); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("peer %s: reading states: %w", n.url, err)
		}
		if err := fn(st); err != nil {
			return err
		}
	}
}

// Open opens the peer's own copy of id (never one it would fetch) from
// byte off on (a Range; 0: the whole blob) with the state it sends along,
// checked to be a present state of id whose size fits the body's length.
func (n *httpNode) Open(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, dtfc.State, error) {
	return n.openRange(ctx, id, off, -1)
}

// OpenPiece opens length bytes of the peer's copy of id from byte off on,
// or up to its end if it is shorter (a Range with both ends: the
// connection can be used again after it).
func (n *httpNode) OpenPiece(ctx context.Context, id dtfc.ID, off, length int64) (io.ReadCloser, dtfc.State, error) {
	return n.openRange(ctx, id, off, length)
}

// openRange opens id from byte off on, length bytes of it (-1: to the end).
func (n *httpNode) openRange(ctx context.Context, id dtfc.ID, off, length int64) (io.ReadCloser, dtfc.State, error) {
	var hdr http.Header
	switch {
	case length >= 0:
		hdr = http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, off+length-1)}}
	case off > 0:
		hdr = http.Header{"Range": {fmt.Sprintf("bytes=%d-", off)}}
	}
	send := hdr
	if ctx.Value(repairFetchKey{}) != nil {
		send = http.Header{HeaderFetch: {fetchRepair}}
		for k, v := range hdr {
			send[k] = v
		}
	}
	resp, err := n.do(ctx, http.MethodGet, routeBlob+id.String(), nil, send)
	if err != nil {
		return nil, dtfc.State{}, err
	}
	if hdr != nil && off == 0 && resp.StatusCode == http.StatusOK {
		// No range of an empty blob is satisfiable (RFC 9110, 14.1.2):
		// ServeContent answers a first piece asked of one with the
		// whole blob, checked as such below.
		hdr, length = nil, -1
	}
	want := http.StatusOK
	if hdr != nil {
		want = http.StatusPartialContent
	}
	if resp.StatusCode != want {
		defer resp.Body.Close()
		return nil, dtfc.State{}, answerErr(n.url, resp)
	}
	st, err := decodeStateHeader(resp.Header.Get(HeaderState))
	if err == nil {
		err = validState(st)
	}
	end := st.Size // past the last byte sent: the blob may end before the range asked for
	if length >= 0 {
		end = min(off+length, st.Size)
	}
	if err == nil && (st.ID != id || st.Deleted || end-off != resp.ContentLength) {
		err = fmt.Errorf("peer %s: inconsistent state header for %s", n.url, id)
	}
	if err == nil && hdr != nil && resp.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", off, end-1, st.Size) {
		err = fmt.Errorf("peer %s: range of %s from %d: Content-Range %q", n.url, id, off, resp.Header.Get("Content-Range"))
	}
	if err != nil {
		resp.Body.Close()
		return nil, dtfc.State{}, err
	}
	return resp.Body, st, nil
}

// Put sends a blob's bytes (size of them, from body) with its state
// (PUT /_internal/blobs/{id}). A blob of resumeMin bytes or more read
// from an io.ReaderAt (a file) is sent so that a cut push resumes: the
// request says so (HeaderResume) and waits for 100 Continue, and a peer
// that kept part of the blob from a transfer that was cut refuses it
// before the body (409, HeaderResumeFrom); Put then sends the rest, from
// there (HeaderOffset). The peer verifies the whole blob's SHA-512 as
// for any push.
func (n *httpNode) Put(ctx context.Context, st dtfc.State, body io.Reader, size int64) error {
	ra, resumable := body.(io.ReaderAt)
	resumable = resumable && size >= resumeMin
	var off int64
	for tries := 0; ; tries++ {
		hdr := http.Header{}
		hdr.Set(HeaderState, encodeStateHeader(st))
		hdr.Set("Content-Type", "application/octet-stream")
		var send io.Reader = &sizedReader{r: body, n: size}
		if resumable {
			hdr.Set(HeaderResume, "1")
			// A refusal then costs no byte of the body (the transport
			// waits ExpectContinueTimeout at most for the peer's word).
			hdr.Set("Expect", "100-continue")
			if off > 0 {
				hdr.Set(HeaderOffset, strconv.FormatInt(off, 10))
			}
			send = &sizedReader{r: io.NewSectionReader(ra, off, size-off), n: size - off}
			if off == size {
				send = nil // the peer kept it all: a body of length 0
			}
		}
		resp, err := n.do(ctx, http.MethodPut, routeBlob+st.ID.String(), send, hdr)
		if err != nil {
			return err
		}
		if from, ok := resumeFrom(resp, size); ok && resumable && tries < maxPutResumes {
			resp.Body.Close()
			off = from
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			return answerErr(n.url, resp)
		}
		return nil
	}
}

// resumeFrom reads where a peer that refused a push wants its body to
// start (409 with HeaderResumeFrom), within a blob of size bytes.
func resumeFrom(resp *http.Response, size int64) (int64, bool) {
	v := resp.Header.Get(HeaderResumeFrom)
	if resp.StatusCode != http.StatusConflict || v == "" {
		return 0, false
	}
	off, err := parseOffset(v)
	return off, err == nil && off <= size
}

// PutBatch sends small blobs with their states in one request (POST
// /_internal/blobs), the body streamed from theirs, and returns the
// peer's result for each, in order; the answer comes once the peer made
// what it stored durable. A peer that does not know the route answers
// errBatchUnsupported.
func (n *httpNode) PutBatch(ctx context.Context, blobs []batchBlob) ([]batchResult, error) {
	parts := make([]io.Reader, 0, 2*len(blobs))
	var size int64
	for _, b := range blobs {
		head := frameHead(b.State)
		parts = append(parts, strings.NewReader(head), io.LimitReader(b.Body, b.State.Size))
		size += int64(len(head)) + b.State.Size
	}
	hdr := http.Header{}
	hdr.Set("Content-Type", batchContentType)
	resp, err := n.do(ctx, http.MethodPost, routeBlobs, &sizedReader{r: io.MultiReader(parts...), n: size}, hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return nil, fmt.Errorf("%w: %w", errBatchUnsupported, answerErr(n.url, resp))
	default:
		return nil, answerErr(n.url, resp)
	}
	var ans batchAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return nil, fmt.Errorf("peer %s: batch of blobs: decoding the answer: %w", n.url, err)
	}
	if len(ans.Results) != len(blobs) {
		return nil, fmt.Errorf("peer %s answered %d results for a batch of %d blobs", n.url, len(ans.Results), len(blobs))
	}
	for i, r := range ans.Results {
		if r.Status >= 500 {
			// Counted against the peer's health, as the answer to a PUT
			// of that blob would be (do).
			n.r.fail(fmt.Errorf("peer %s: %s: %d %s", n.url, blobs[i].State.ID, r.Status, r.Error))
			break
		}
	}
	return ans.Results, nil
}

// Offer offers states and deny entries (POST /_internal/changes) and
// returns the peer's result for each.
func (n *httpNode) Offer(ctx context.Context, req changesRequest) (changesAnswer, error) {
	var ans changesAnswer
	err := n.callJSON(ctx, http.MethodPost, routeChanges, req, &ans)
	return ans, err
}

// Digests returns the peer's 256 range digests: of the whole ID space
// (prefix empty), or of the 256 sub-ranges of one first byte (prefix of
// one byte).
func (n *httpNode) Digests(ctx context.Context, prefix []byte) (digestsAnswer, error) {
	path := routeDigests
	if len(prefix) > 0 {
		path += fmt.Sprintf("/%02x", prefix[0])
	}
	var ans digestsAnswer
	err := n.getJSON(ctx, path, &ans)
	return ans, err
}

// DenyList returns the peer's whole deny list and the lifts it forgot
// lately (GET /_internal/deny).
func (n *httpNode) DenyList(ctx context.Context) (denyList, error) {
	var list denyList
	err := n.getJSON(ctx, routeDeny, &list)
	return list, err
}

// Lookup returns the states the peer knows of ids (POST
// /_internal/lookup); IDs it has no record of are left out.
func (n *httpNode) Lookup(ctx context.Context, ids []dtfc.ID) ([]dtfc.State, error) {
	var ans lookupAnswer
	err := n.callJSON(ctx, http.MethodPost, routeLookup, lookupRequest{IDs: ids}, &ans)
	return ans.States, err
}

// Resynced tells the peer this node resynced against its expiry mark of
// horizon (POST /_internal/resynced).
func (n *httpNode) Resynced(ctx context.Context, horizon dtfc.Timestamp) error {
	var ans struct{}
	return n.callJSON(ctx, http.MethodPost, routeResynced, resyncedRequest{Horizon: horizon}, &ans)
}

// membersMessage is what an exchange of members sends and answers.
type membersMessage struct {
	// Node is the sender's node identity.
	Node    string   `json:"node"`
	Members []Member `json:"members"`
}

// Members exchanges membership records with the peer (POST
// /_internal/members).
func (n *httpNode) Members(ctx context.Context, msg membersMessage) (membersMessage, error) {
	var ans membersMessage
	err := n.callJSON(ctx, http.MethodPost, routeMembers, msg, &ans)
	return ans, err
}

func encodeStateHeader(st dtfc.State) string {
	b, _ := json.Marshal(bounded(st))
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeStateHeader(v string) (dtfc.State, error) {
	var st dtfc.State
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		return st, fmt.Errorf("bad %s header: %w", HeaderState, err)
	}
	return st, nil
}

// sizedReader lets net/http send a Content-Length for a file body.
type sizedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (s *sizedReader) Read(p []byte) (int, error) { return s.r.Read(p) }

// Len is what http.NewRequest looks for... it only knows a few types, so
// do() sets ContentLength from it.
func (s *sizedReader) Len() int64 { return s.n }
