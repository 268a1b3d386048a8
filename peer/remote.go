package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
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
)

// Headers of the node-to-node protocol.
const (
	// HeaderSecret carries the cluster secret on node-to-node requests.
	HeaderSecret = "X-Dtfc-Cluster-Secret"
	// HeaderFrom names the node identity of the requesting node.
	HeaderFrom = "X-Dtfc-From"
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
)

// errPeerNotFound: the peer answered 404.
var errPeerNotFound = errors.New("peer does not hold it")

// errPeerResyncing: the peer is resyncing and offers none of its states.
var errPeerResyncing = errors.New("peer is resyncing")

// errExpired: the peer refused what this node offered because it marked
// this node expired (it forgot deletes this node never acknowledged).
var errExpired = errors.New("this node is expired at the peer and must resync first")

// HeaderResyncing marks the 503 of a node that is resyncing.
const HeaderResyncing = "X-Dtfc-Resyncing"

// Backoff bounds for retrying a failed peer: twice a second at first, once
// every 30 seconds at most (API.md, Consistency 3).
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// stallTimeout cuts off a node-to-node exchange in which nothing moves
// for this long: no byte of the request body taken, no answer (a peer
// working on a long request sends 102 Processing every heartbeat), no
// byte of the answer's body. A peer that stops answering without closing
// its connection is given up on after this, not after minutes.
var stallTimeout = 15 * time.Second

// remote is one peer and this node's experience of it.
type remote struct {
	Peer
	hc     *http.Client
	secret string
	self   string // this node's identity, sent as HeaderFrom
	wall   func() time.Time
	// notes receives what the peer's answers tell this node about itself
	// (that it is expired there). Set by the Cluster; nil in tests.
	notes noteTaker

	mu           sync.Mutex
	nodeID       string     // the peer's identity, learned from its answers
	reportedRole string     // the role the peer says it has ("" until known)
	isSelf       bool       // the peer's identity is this node's: it is this node
	expiredMark  expiryMark // this node marked the peer expired (zero: not)
	clockRefused int64      // changes the peer refused for their clock
	// peerDate is the Date header of the peer's last answer (its wall
	// clock, to the second) and dateAt when it came (monotonic).
	peerDate    time.Time
	dateAt      time.Time
	up          bool
	contacted   bool
	lastContact time.Time
	lastErr     string
	lastErrAt   time.Time
	failures    int
	retryAt     time.Time
	kick        chan struct{} // wakes the pusher when the peer is back
	// pushFailedAt is when the pusher last failed or began a retry
	// (zero: its last push succeeded). A peer can refuse pushes (400, 507) while every other
	// exchange with it succeeds, so it never looks down and its return
	// would not wake the pusher from a backoff of up to 30 s.
	pushFailedAt time.Time
}

// pushWake is how often at most a peer's successful exchanges wake a
// pusher whose pushes to it fail although the peer is up.
const pushWake = 5 * time.Second

// noteTaker is told what peers say about this node.
type noteTaker interface {
	// expiredBy: the peer r marked this node expired; what it forgot
	// without this node's acknowledgement is older than horizon.
	expiredBy(r *remote, horizon dtfc.Timestamp)
	// learned: r's identity or role became known or changed.
	learned(r *remote)
}

func newRemote(p Peer, hc *http.Client, secret, self string, wall func() time.Time) *remote {
	if wall == nil {
		wall = time.Now
	}
	return &remote{Peer: p, hc: hc, secret: secret, self: self, wall: wall, kick: make(chan struct{}, 1)}
}

// skew returns this node's wall clock now minus the peer's (as its last
// answer's Date header said, carried forward by the time since), and
// whether it is worth anything: the peer is up and answered in the last
// minutes.
func (r *remote) skew() (time.Duration, bool) {
	r.mu.Lock()
	date, at, up := r.peerDate, r.dateAt, r.up
	r.mu.Unlock()
	if !up || at.IsZero() || time.Since(at) > 10*time.Minute {
		return 0, false
	}
	return r.wall().Sub(date.Add(time.Since(at))), true
}

// ok records a successful exchange and what the answer's headers say of
// the peer.
func (r *remote) ok(h http.Header) {
	nodeID, role := h.Get(HeaderNode), h.Get(HeaderRole)
	date, derr := http.ParseTime(h.Get("Date"))
	r.mu.Lock()
	if derr == nil {
		// The header is truncated to the second: half a second in the
		// middle of it.
		r.peerDate, r.dateAt = date.Add(500*time.Millisecond), time.Now()
	}
	wasDown := r.contacted && !r.up
	r.up, r.contacted, r.failures, r.retryAt = true, true, 0, time.Time{}
	r.lastContact = time.Now()
	changed := false
	if nodeID != "" && nodeID != r.nodeID {
		r.nodeID, r.isSelf, changed = nodeID, nodeID == r.self, true
	}
	if (role == RoleReplica || role == RoleCache) && role != r.reportedRole {
		r.reportedRole, changed = role, true
	}
	wake := wasDown || r.pushRetryLocked()
	r.mu.Unlock()
	if changed && r.notes != nil {
		r.notes.learned(r)
	}
	if horizon, ok := parseExpired(h.Get(HeaderExpired)); ok && r.notes != nil {
		r.notes.expiredBy(r, horizon)
	}
	if wake {
		r.wake()
	}
}

// IsCache reports whether the peer is a cache: what it says it is once it
// has answered, what the peer list says before.
func (r *remote) IsCache() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reportedRole != "" {
		return r.reportedRole == RoleCache
	}
	return r.Role == RoleCache
}

// reported returns the role the peer says it has, "" until it answered.
func (r *remote) reported() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reportedRole
}

// clockRefusals counts changes the peer refused for their clock.
func (r *remote) clockRefusals(n int) {
	r.mu.Lock()
	r.clockRefused += int64(n)
	r.mu.Unlock()
}

// Self reports whether the peer turned out to be this very node (listed
// under a URL other than its --me).
func (r *remote) Self() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.isSelf
}

// identity is the peer's node ID, or its URL while the ID is unknown: two
// entries of one identity are one node.
func (r *remote) identity() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodeID != "" {
		return "node " + r.nodeID
	}
	return "url " + r.URL
}

// NodeID returns the peer's identity, "" until it has answered.
func (r *remote) NodeID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodeID
}

// setExpired records the mark this node holds against the peer (zero:
// none).
func (r *remote) setExpired(m expiryMark) {
	r.mu.Lock()
	r.expiredMark = m
	r.mu.Unlock()
}

// isExpired reports whether this node marked the peer expired.
func (r *remote) isExpired() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.expiredMark.Horizon != 0
}

// expiredHorizon is the horizon of this node's mark against the peer (0:
// not marked).
func (r *remote) expiredHorizon() dtfc.Timestamp {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.expiredMark.Horizon
}

// HeaderExpired carries a mark's horizon as a decimal clock reading.
func formatExpired(h dtfc.Timestamp) string { return strconv.FormatUint(uint64(h), 10) }

func parseExpired(v string) (dtfc.Timestamp, bool) {
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return dtfc.Timestamp(n), err == nil && n != 0
}

// pushFailed and pushOK record how the pusher's last attempt went.
func (r *remote) pushFailed() {
	r.mu.Lock()
	r.pushFailedAt = time.Now()
	r.mu.Unlock()
}

func (r *remote) pushOK() {
	r.mu.Lock()
	r.pushFailedAt = time.Time{}
	r.mu.Unlock()
}

// pushRetryLocked reports whether the peer's signs of life should wake a
// pusher whose pushes fail: at most once per pushWake, so that a peer
// that keeps refusing (a full disk) is not pushed to on every exchange.
func (r *remote) pushRetryLocked() bool {
	if r.pushFailedAt.IsZero() || time.Since(r.pushFailedAt) < pushWake {
		return false
	}
	r.pushFailedAt = time.Now()
	return true
}

// fail records a failure and schedules the next attempt with exponential
// backoff.
func (r *remote) fail(err error) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.up, r.contacted = false, true
	r.failures++
	r.lastErr, r.lastErrAt = err.Error(), time.Now()
	d := backoff(r.failures)
	r.retryAt = time.Now().Add(d)
	return d
}

func backoff(failures int) time.Duration {
	d := minBackoff
	for i := 1; i < failures && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

// wake tells the pusher to retry now (the peer showed signs of life).
func (r *remote) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// backedOff reports whether the peer failed recently and its retry time
// has not come.
func (r *remote) backedOff() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now().Before(r.retryAt)
}

// PeerStatus describes one peer as this node sees it.
type PeerStatus struct {
	URL  string `json:"url"`
	Role string `json:"role"`
	// ReportedRole is the role the peer says it has, once it answered;
	// it wins over Role (the peer list's).
	ReportedRole string `json:"reported_role,omitempty"`
	Node         string `json:"node,omitempty"`
	// Self: the entry reaches this very node (under another URL); it is
	// ignored.
	Self bool `json:"self,omitempty"`
	// Expired: this node forgot deletes the peer never acknowledged (it
	// was away longer than tombstone_expiry); it must resync on return.
	// ExpiredSince is the last moment it was known to be caught up with
	// this node's changes; ExpiredHorizon the time of the latest of what
	// was forgotten without its acknowledgement.
	Expired        bool      `json:"expired"`
	ExpiredSince   time.Time `json:"expired_since,omitzero"`
	ExpiredHorizon time.Time `json:"expired_horizon,omitzero"`
	// ClockRefused counts changes the peer refused because their clock
	// was too far ahead of its own (since this node started).
	ClockRefused int64     `json:"clock_refused"`
	Up           bool      `json:"up"`
	Contacted    bool      `json:"contacted"`
	LastContact  time.Time `json:"last_contact,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	Failures     int       `json:"failures"`
	// Queue counts operations not yet accepted by the peer.
	Queue int64 `json:"queue"`
	// LagSeconds is how long replication to the peer has been behind
	// (0 when its queue is empty).
	LagSeconds float64 `json:"lag_seconds"`
}

func (r *remote) status() PeerStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	var horizon time.Time
	if r.expiredMark.Horizon != 0 {
		horizon = r.expiredMark.Horizon.Time()
	}
	return PeerStatus{
		ExpiredHorizon: horizon,
		URL:            r.URL, Role: r.Role, ReportedRole: r.reportedRole, Node: r.nodeID, Self: r.isSelf,
		Expired: r.expiredMark.Horizon != 0, ExpiredSince: r.expiredMark.Since, ClockRefused: r.clockRefused,
		Up: r.up, Contacted: r.contacted,
		LastContact: r.lastContact, LastError: r.lastErr, LastErrorAt: r.lastErrAt, Failures: r.failures,
	}
}

// do sends a node-to-node request. Transport failures and 5xx answers count
// against the peer's health; any answer from it proves it is up. The
// exchange is cut off when nothing moves for stallTimeout (see there); the
// answer's body must be closed, which releases that watch.
func (r *remote) do(parent context.Context, method, path string, body io.Reader, hdr http.Header) (*http.Response, error) {
	ctx, cancel := context.WithCancel(parent)
	w := newStallWatch(cancel)
	if body != nil {
		body = &progressReader{r: body, w: w}
	}
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error { w.touch(); return nil },
	})
	req, err := http.NewRequestWithContext(ctx, method, r.URL+"/_internal"+path, body)
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
	if r.secret != "" {
		req.Header.Set(HeaderSecret, r.secret)
	}
	req.Header.Set(HeaderFrom, r.self)
	if h := r.expiredHorizon(); h != 0 {
		req.Header.Set(HeaderExpired, formatExpired(h))
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		stalled := w.stop()
		switch {
		case stalled:
			err = fmt.Errorf("no progress for %v: %w", stallTimeout, err)
			r.fail(err)
		case parent.Err() == nil:
			r.fail(err)
		}
		return nil, fmt.Errorf("peer %s: %w", r.URL, err)
	}
	w.touch()
	resp.Body = &progressBody{ReadCloser: resp.Body, w: w}
	if resp.StatusCode >= 500 {
		err := answerErr(r.URL, resp)
		resp.Body.Close()
		if resp.Header.Get(HeaderResyncing) != "" {
			// Alive, but offering nothing for now.
			r.ok(resp.Header)
			return nil, fmt.Errorf("%w: %w", errPeerResyncing, err)
		}
		r.fail(err)
		return nil, err
	}
	r.ok(resp.Header)
	if resp.StatusCode == http.StatusConflict && resp.Header.Get(HeaderExpired) != "" {
		err := answerErr(r.URL, resp)
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %w", errExpired, err)
	}
	return resp, nil
}

// stallWatch cancels an exchange when nothing moves for stallTimeout.
type stallWatch struct {
	timer   *time.Timer
	cancel  context.CancelFunc
	mu      sync.Mutex
	fired   bool
	stopped bool
}

func newStallWatch(cancel context.CancelFunc) *stallWatch {
	w := &stallWatch{cancel: cancel}
	w.timer = time.AfterFunc(stallTimeout, func() {
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
		w.timer.Reset(stallTimeout)
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
		err = fmt.Errorf("no progress for %v: %w", stallTimeout, err)
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
func (r *remote) getJSON(ctx context.Context, path string, v any) error {
	return r.callJSON(ctx, http.MethodGet, path, nil, v)
}

func (r *remote) callJSON(ctx context.Context, method, path string, in, out any) error {
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
	resp, err := r.do(ctx, method, path, body, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerErr(r.URL, resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("peer %s: %s %s: decoding the answer: %w", r.URL, method, path, err)
	}
	return nil
}

// stateOf asks the peer for its state of id (GET /_internal/state/{id}):
// its record, or the tombstone it forgot lately (HeaderForgotten), or
// errPeerNotFound.
func (r *remote) stateOf(ctx context.Context, id dtfc.ID) (dtfc.State, error) {
	resp, err := r.do(ctx, http.MethodGet, "/state/"+id.String(), nil, nil)
	if err != nil {
		return dtfc.State{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		if f := resp.Header.Get(HeaderForgotten); f != "" {
			return decodeStateHeader(f)
		}
	}
	if resp.StatusCode != http.StatusOK {
		return dtfc.State{}, answerErr(r.URL, resp)
	}
	var ans stateAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return dtfc.State{}, fmt.Errorf("peer %s: state of %s: %w", r.URL, id, err)
	}
	return ans.State, nil
}

// states streams the peer's states of every ID beginning with prefix to
// fn, in ID order (GET /_internal/states: one JSON object per line).
func (r *remote) states(ctx context.Context, prefix []byte, fn func(dtfc.State) error) error {
	resp, err := r.do(ctx, http.MethodGet, "/states?prefix="+hex.EncodeToString(prefix), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerErr(r.URL, resp)
	}
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for {
		var st dtfc.State
		if err := dec.Decode(&st); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("peer %s: reading states: %w", r.URL, err)
		}
		if err := fn(st); err != nil {
			return err
		}
	}
}

// getBlob opens the peer's own copy of id (never one it would fetch).
func (r *remote) getBlob(ctx context.Context, id dtfc.ID, method string) (*http.Response, dtfc.State, error) {
	resp, err := r.do(ctx, method, "/blobs/"+id.String(), nil, nil)
	if err != nil {
		return nil, dtfc.State{}, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, dtfc.State{}, answerErr(r.URL, resp)
	}
	st, err := decodeStateHeader(resp.Header.Get(HeaderState))
	if err == nil {
		err = validState(st)
	}
	if err == nil && (st.ID != id || st.Deleted || st.Size != resp.ContentLength) {
		err = fmt.Errorf("peer %s: inconsistent state header for %s", r.URL, id)
	}
	if err != nil {
		resp.Body.Close()
		return nil, dtfc.State{}, err
	}
	return resp, st, nil
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

// secretOK compares a presented secret with the configured one in
// constant time.
func secretOK(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
