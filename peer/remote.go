package peer

import (
	"crypto/subtle"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
)

// Backoff bounds for retrying a failed peer: twice a second at first, once
// every 30 seconds at most (API.md, Consistency 3).
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// remote is one peer and this node's experience of it.
type remote struct {
	Peer
	// node is how this node talks to the peer (an *httpNode, or a fake
	// in tests).
	node Node
	self string // this node's identity
	wall func() time.Time
	// notes receives what the peer's answers tell this node about itself
	// (that it is expired there). Set by the Cluster; nil in tests.
	notes noteTaker

	mu           sync.Mutex
	nodeID       string     // the peer's identity, learned from its answers
	reportedRole dtfc.Role  // the role the peer says it has ("" until known)
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
	// noBatches: the peer answered that it does not know batches of
	// blobs (a dtfc from before them): it gets blobs one by one, until
	// its identity changes or it is seen down and back (an upgrade
	// restarts it), when a batch is tried again.
	noBatches bool
	// seenIDs: when each identity last answered at this URL (those of
	// the last sharedURLWindow); sharedAt: when the URL last answered
	// again as an identity it had answered as before another (zero:
	// never). Such an entry reaches more than one node.
	seenIDs  map[string]time.Time
	sharedAt time.Time
	// sharedTold: when notes was last told of it (once a window).
	sharedTold time.Time
}

// sharedURLWindow is how long an identity that answered at a URL is
// remembered there: an entry whose identity goes back to one it had
// within it reaches several nodes (a load balancer, a name that moves
// between hosts), and is shown so for as long.
const sharedURLWindow = 10 * time.Minute

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
	// sharedURL: r's URL answered again as an identity it had answered
	// as before another; ids are those of the last sharedURLWindow.
	sharedURL(r *remote, ids []string)
	// removedBy: r refused this node as removed from the cluster.
	removedBy(r *remote)
	// back: r answered after it had failed.
	back(r *remote)
	// heardMarks: the peer of identity source marks the nodes v lists
	// (HeaderMarks) expired.
	heardMarks(source, v string)
	// marksHeader is HeaderMarks for this node's requests.
	marksHeader() string
	// instance is this process's token (HeaderInstance).
	instance() string
	// checkAnswer: an error if the answer of the peer at url to a
	// request sent at sent comes from a copy of this node, or of
	// another (instances.go).
	checkAnswer(url string, h http.Header, sent time.Time) error
}

// Node is a peer as this node's work with it sees it: what push, fetch,
// anti-entropy, resync and lookups each need of it (their interfaces,
// declared where they are used). *httpNode implements it over the wire.
type Node interface {
	stater
	blobSource
	pushTarget
	replicaSource
	resyncTarget
}

var _ Node = (*httpNode)(nil)

// newRemote returns the remote of p, talked to over HTTP with hc.
func newRemote(p Peer, hc *http.Client, secret, self string, wall func() time.Time) *remote {
	r := newRemoteNode(p, nil, self, wall)
	r.node = &httpNode{url: p.URL, hc: hc, secret: secret, self: self, r: r}
	return r
}

// newRemoteNode returns the remote of p, talked to through node.
func newRemoteNode(p Peer, node Node, self string, wall func() time.Time) *remote {
	if wall == nil {
		wall = time.Now
	}
	return &remote{Peer: p, node: node, self: self, wall: wall, kick: make(chan struct{}, 1)}
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
	nodeID, role := h.Get(HeaderNode), dtfc.Role(h.Get(HeaderRole))
	date, derr := http.ParseTime(h.Get("Date"))
	r.mu.Lock()
	if derr == nil {
		// The header is truncated to the second: half a second in the
		// middle of it.
		r.peerDate, r.dateAt = date.Add(500*time.Millisecond), time.Now()
	}
	wasDown := r.contacted && !r.up
	r.up, r.contacted, r.failures, r.retryAt = true, true, 0, time.Time{}
	now := time.Now()
	r.lastContact = now
	changed := false
	var shared []string
	if nodeID != "" {
		if nodeID != r.nodeID {
			r.nodeID, r.isSelf, changed = nodeID, nodeID == r.self, true
			if last, ok := r.seenIDs[nodeID]; ok && now.Sub(last) < sharedURLWindow {
				r.sharedAt = now
				if r.sharedTold.IsZero() || now.Sub(r.sharedTold) >= sharedURLWindow {
					r.sharedTold = now
					shared = r.identitiesLocked(now)
				}
			}
		}
		r.seeIDLocked(nodeID, now)
	}
	if (role == RoleReplica || role == RoleCache) && role != r.reportedRole {
		r.reportedRole, changed = role, true
	}
	if changed || wasDown {
		r.noBatches = false
	}
	wake := wasDown || r.pushRetryLocked()
	r.mu.Unlock()
	if changed && r.notes != nil {
		r.notes.learned(r)
	}
	if shared != nil && r.notes != nil {
		r.notes.sharedURL(r, shared)
	}
	if horizon, ok := parseExpired(h.Get(HeaderExpired)); ok && r.notes != nil {
		r.notes.expiredBy(r, horizon)
	}
	if nodeID != "" && r.notes != nil {
		r.notes.heardMarks(nodeID, h.Get(HeaderMarks))
	}
	if h.Get(HeaderRemoved) != "" && r.notes != nil {
		r.notes.removedBy(r)
	}
	if wasDown && r.notes != nil {
		r.notes.back(r)
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
func (r *remote) reported() dtfc.Role {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reportedRole
}

// batches reports whether the peer may be sent batches of blobs.
func (r *remote) batches() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.noBatches
}

// refuseBatches records that the peer does not know batches of blobs.
func (r *remote) refuseBatches() {
	r.mu.Lock()
	r.noBatches = true
	r.mu.Unlock()
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
type PeerStatus = api.PeerStatus

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
		Nodes: r.identitiesLocked(time.Now()),
	}
}

// seeIDLocked notes that identity id answered at r's URL at now, and
// forgets those not heard from within sharedURLWindow.
func (r *remote) seeIDLocked(id string, now time.Time) {
	if r.seenIDs == nil {
		r.seenIDs = map[string]time.Time{}
	}
	r.seenIDs[id] = now
	for k, at := range r.seenIDs {
		if now.Sub(at) >= sharedURLWindow {
			delete(r.seenIDs, k)
		}
	}
}

// sharedLately reports whether r's URL answered as several nodes by
// turns within sharedURLWindow (a load balancer in the peer list).
func (r *remote) sharedLately() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.sharedAt.IsZero() && time.Since(r.sharedAt) < sharedURLWindow
}

// identitiesLocked returns, sorted, the identities that answered at r's
// URL within sharedURLWindow of now, if it is shared (sharedAt within
// it), else nil.
func (r *remote) identitiesLocked(now time.Time) []string {
	if r.sharedAt.IsZero() || now.Sub(r.sharedAt) >= sharedURLWindow {
		return nil
	}
	var ids []string
	for k, at := range r.seenIDs {
		if now.Sub(at) < sharedURLWindow {
			ids = append(ids, k)
		}
	}
	slices.Sort(ids)
	return ids
}

// secretOK compares a presented secret with the configured one in
// constant time.
func secretOK(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
