package peer

import (
	"errors"
	"net/http"
	"sync"
	"time"
)

// While a peer catches this node up by pushes, anti-entropy leaves that
// peer alone: the pushes bring the blobs in batches, their syncs shared,
// and a comparison would pull the very same blobs one at a time, each
// with a commit of its own (BenchmarkCatchUp: 1,423 of 10,000 blobs
// fetched twice, the catch-up 1.8x as long as by the pushes alone). A
// peer is catching this node up while its offers are full rounds
// (pushBatch changes: it has more to send), and for catchUpWindow after
// the last of them or after the last bytes it pushed since; an offer
// that is not full (its feed ran dry) ends it at once.
//
// Deferring only delays. The peer's digests are still asked for and its
// deny list compared (a node whose metadata was rebuilt needs that to
// take uploads again); only the range comparisons and pulls wait. A
// deferred round is retried after catchUpWindow rather than the whole
// interval, so the comparison comes soon after the pushes are done; and
// a peer is never deferred for longer than catchUpBound in a row, so a
// peer whose feed never runs dry (or whose pushes keep failing) is still
// compared, and a blob this node can get only by anti-entropy still
// comes. The node's "synced" stays false until a round has compared.

var (
	// catchUpWindow is how long after a peer's last full offer (or the
	// bytes it pushed after one) it still counts as catching this node
	// up: a few rounds' time, so that a round of large blobs (whose
	// bytes refresh it) keeps it.
	catchUpWindow = 5 * time.Second
	// catchUpMinBound is the least of how long a peer may be deferred
	// in a row, whatever the interval (the bound is otherwise
	// catchUpBoundRounds intervals).
	catchUpMinBound = time.Minute
)

// catchUpBoundRounds is how many anti-entropy intervals a peer may be
// deferred in a row (at least catchUpMinBound).
const catchUpBoundRounds = 2

// errCatchingUp: the comparison with a peer was deferred, the peer is
// catching this node up by pushes.
var errCatchingUp = errors.New("the peer is catching this node up by pushes: anti-entropy with it deferred")

// catchUps records, by node identity, which peers are catching this
// node up, and since when each has been deferred.
type catchUps struct {
	window time.Duration // catchUpWindow when the Cluster was made
	bound  time.Duration // the longest deferral in a row
	now    func() time.Time

	mu    sync.Mutex
	peers map[string]*catchUp
}

// catchUp is one peer's.
type catchUp struct {
	// active is when the peer last offered a full round, or pushed
	// bytes after one; zero once an offer was not full.
	active time.Time
	// deferredSince is when the comparisons with the peer began to be
	// deferred; zero when the last one was not.
	deferredSince time.Time
}

func newCatchUps(interval time.Duration) *catchUps {
	return &catchUps{
		window: catchUpWindow,
		bound:  max(catchUpBoundRounds*interval, catchUpMinBound),
		now:    time.Now,
		peers:  map[string]*catchUp{},
	}
}

func (cs *catchUps) get(node string) *catchUp {
	p := cs.peers[node]
	if p == nil {
		p = &catchUp{}
		cs.peers[node] = p
	}
	return p
}

// maxCatchUps bounds the senders remembered: a cluster without a secret
// takes offers from anyone, under any name.
const maxCatchUps = 1024

// offered records that the peer node offered n changes: a full round
// says it has more to send, a shorter one that it has sent everything.
func (cs *catchUps) offered(node string, n int) {
	if node == "" {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	p := cs.peers[node]
	if p == nil && n < pushBatch {
		return // nothing to remember
	}
	if p == nil && len(cs.peers) >= maxCatchUps {
		cs.pruneLocked()
	}
	p = cs.get(node)
	if n >= pushBatch {
		p.active = cs.now()
	} else {
		p.active = time.Time{}
	}
}

// pruneLocked forgets the senders neither catching this node up nor
// deferred.
func (cs *catchUps) pruneLocked() {
	for node, p := range cs.peers {
		if !cs.activeLocked(p) && p.deferredSince.IsZero() {
			delete(cs.peers, node)
		}
	}
}

// pushed records that the peer node pushed bytes: if it is catching
// this node up, it still is.
func (cs *catchUps) pushed(node string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if p := cs.peers[node]; p != nil && cs.activeLocked(p) {
		p.active = cs.now()
	}
}

func (cs *catchUps) activeLocked(p *catchUp) bool {
	return !p.active.IsZero() && cs.now().Sub(p.active) < cs.window
}

// mayDefer reports whether a comparison with the peer node may be
// deferred: it has not been for catchUpBound in a row.
func (cs *catchUps) mayDefer(node string) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	p := cs.peers[node]
	return p == nil || p.deferredSince.IsZero() || cs.now().Sub(p.deferredSince) < cs.bound
}

// catchingUp reports whether the peer node is catching this node up.
func (cs *catchUps) catchingUp(node string) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	p := cs.peers[node]
	return p != nil && cs.activeLocked(p)
}

// deferred records that a comparison with the peer node was deferred;
// first says that the one before it was not.
func (cs *catchUps) deferred(node string) (first bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	p := cs.get(node)
	if p.deferredSince.IsZero() {
		p.deferredSince = cs.now()
		return true
	}
	return false
}

// compared records that a comparison with the peer node ran to its end.
func (cs *catchUps) compared(node string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if p := cs.peers[node]; p != nil {
		p.deferredSince = time.Time{}
	}
}

// noteOffer is hChanges' note of an offer of n changes.
func (c *Cluster) noteOffer(r *http.Request, n int) {
	c.catchUp.offered(r.Header.Get(HeaderFrom), n)
}

// notePushes marks that a peer pushing bytes (or offering) is still at
// it: a round of large blobs may take longer than catchUpWindow.
func (c *Cluster) notePushes(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if from := r.Header.Get(HeaderFrom); from != "" {
			c.catchUp.pushed(from)
		}
		next.ServeHTTP(w, r)
	})
}

// deferSync returns a deferral of the comparison with r, logging the
// first of a run and counting each.
func (c *Cluster) deferSync(r *remote, node string) error {
	if c.catchUp.deferred(node) {
		c.log.Info("anti-entropy with a peer deferred: it is catching this node up by pushes",
			"peer", r.URL, "at_most", c.catchUp.bound)
	}
	c.metrics.deferrals.WithLabelValues(r.URL).Inc()
	return errCatchingUp
}
