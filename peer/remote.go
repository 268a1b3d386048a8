package peer

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
)

// errPeerNotFound: the peer answered 404.
var errPeerNotFound = errors.New("peer does not hold it")

// errPeerResyncing: the peer is resyncing and offers none of its states.
var errPeerResyncing = errors.New("peer is resyncing")

// HeaderResyncing marks the 503 of a node that is resyncing.
const HeaderResyncing = "X-Dtfc-Resyncing"

// Backoff bounds for retrying a failed peer: twice a second at first, once
// every 30 seconds at most (API.md, Consistency 3).
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// remote is one peer and this node's experience of it.
type remote struct {
	Peer
	hc     *http.Client
	secret string
	self   string // this node's identity, sent as HeaderFrom

	mu          sync.Mutex
	nodeID      string // the peer's identity, learned from its answers
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

func newRemote(p Peer, hc *http.Client, secret, self string) *remote {
	return &remote{Peer: p, hc: hc, secret: secret, self: self, kick: make(chan struct{}, 1)}
}

// ok records a successful exchange.
func (r *remote) ok(nodeID string) {
	r.mu.Lock()
	wasDown := r.contacted && !r.up
	r.up, r.contacted, r.failures, r.retryAt = true, true, 0, time.Time{}
	r.lastContact = time.Now()
	if nodeID != "" {
		r.nodeID = nodeID
	}
	wake := wasDown || r.pushRetryLocked()
	r.mu.Unlock()
	if wake {
		r.wake()
	}
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
	URL         string    `json:"url"`
	Role        string    `json:"role"`
	Node        string    `json:"node,omitempty"`
	Up          bool      `json:"up"`
	Contacted   bool      `json:"contacted"`
	LastContact time.Time `json:"last_contact,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Failures    int       `json:"failures"`
	// Queue counts operations not yet accepted by the peer.
	Queue int64 `json:"queue"`
	// LagSeconds is how long replication to the peer has been behind
	// (0 when its queue is empty).
	LagSeconds float64 `json:"lag_seconds"`
}

func (r *remote) status() PeerStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return PeerStatus{
		URL: r.URL, Role: r.Role, Node: r.nodeID, Up: r.up, Contacted: r.contacted,
		LastContact: r.lastContact, LastError: r.lastErr, LastErrorAt: r.lastErrAt, Failures: r.failures,
	}
}

// do sends a node-to-node request. Transport failures and 5xx answers count
// against the peer's health; any answer from it proves it is up.
func (r *remote) do(ctx context.Context, method, path string, body io.Reader, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.URL+"/_internal"+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if l, ok := body.(interface{ Len() int64 }); ok {
		req.ContentLength = l.Len()
	}
	if r.secret != "" {
		req.Header.Set(HeaderSecret, r.secret)
	}
	req.Header.Set(HeaderFrom, r.self)
	resp, err := r.hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			r.fail(err)
		}
		return nil, fmt.Errorf("peer %s: %w", r.URL, err)
	}
	if resp.StatusCode >= 500 {
		err := answerErr(r.URL, resp)
		resp.Body.Close()
		if resp.Header.Get(HeaderResyncing) != "" {
			// Alive, but offering nothing for now.
			r.ok(resp.Header.Get(HeaderNode))
			return nil, fmt.Errorf("%w: %w", errPeerResyncing, err)
		}
		r.fail(err)
		return nil, err
	}
	r.ok(resp.Header.Get(HeaderNode))
	return resp, nil
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
	b, _ := json.Marshal(st)
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
