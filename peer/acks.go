package peer

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/sleep"
)

// Forgetting is the dangerous operation (DESIGN.md): a tombstone or a
// lifted block is forgotten only when it is older than the retention and
// every listed peer has acknowledged it — its pusher's cursor passed it.
// A peer that has not acknowledged a tombstone older than
// tombstone_expiry stops holding it back; this node then marks the peer
// expired, persistently, before the first such tombstone goes. An expired
// peer is not asked for blobs or states, its pushes are refused (409 with
// HeaderExpired), and every exchange tells it, until it resyncs
// (resync.go) and says so (POST /_internal/resynced).

const (
	keyCursorPrefix  = "cursor "      // + peer URL: the peer's acknowledged feed position
	keySkippedPrefix = "skipped "     // + peer URL: the cursor before the first upload skipped for it as a cache ("" if none)
	keyCursorNode    = "cursor node " // + peer URL: the identity of the node the cursor counts for
	keyAckedAtPrefix = "acked "       // + peer URL: unix ms when the peer last was caught up
	keyExpiredPrefix = "expired "     // + identity: an expiryMark
	ackedAtPersist   = time.Minute
)

func cursorKey(url string) string { return keyCursorPrefix + url }

// expiryMark records that this node forgot deletes (or lifts) a peer
// never acknowledged.
type expiryMark struct {
	URL  string `json:"url"`
	Node string `json:"node,omitempty"`
	// Horizon is the greatest clock of what was forgotten without the
	// peer's acknowledgement: whatever was deleted by it is older. It
	// grows if more is forgotten before the peer resyncs, and names the
	// mark: the peer resyncs against a horizon, and the mark is lifted
	// only for one at least this great.
	Horizon dtfc.Timestamp `json:"horizon"`
	// Since is the last moment the peer was known to be caught up with
	// this node's feed (shown; zero if never).
	Since time.Time `json:"since"`
}

// expiries is the set of peers this node marked expired. mu guards the
// map only and is never held across a write to the store (a write waits
// for the store's committer, which may be running a purge that asks
// about marks); persist serialises the writes.
type expiries struct {
	mu    sync.Mutex
	marks map[string]expiryMark // by identity ("node <id>" or "url <url>")
	// lifted is when each identity's mark was last lifted (memory only):
	// markLate gives such a peer one expiry before it may mark it again.
	lifted  map[string]time.Time
	persist sync.Mutex
}

// recentlyLifted reports whether the mark of identity was lifted less
// than d before now.
func (e *expiries) recentlyLifted(identity string, now time.Time, d time.Duration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	at, ok := e.lifted[identity]
	return ok && now.Sub(at) < d
}

// ledgerStore is what the expiries and the feed clock need of the blob store: where
// they are kept, the feed's end, and which tombstones are old enough to
// forget.
type ledgerStore interface {
	NodeID() string
	Value(key string) ([]byte, error)
	SetValue(key string, v []byte) error
	LastSeq() uint64
	Forgettable(before dtfc.Timestamp, fn func(seq uint64, clock dtfc.Timestamp)) error
}

func (c *Cluster) ledgerStore() ledgerStore { return c.store }

// loadExpiries reads the marks persisted by earlier runs.
func (c *Cluster) loadExpiries() {
	c.expired.marks = map[string]expiryMark{}
	v, err := c.ledgerStore().Value(keyExpiredPrefix + "index")
	if err != nil || v == nil {
		return
	}
	var keys []string
	if json.Unmarshal(v, &keys) != nil {
		return
	}
	for _, k := range keys {
		v, err := c.ledgerStore().Value(keyExpiredPrefix + k)
		if err != nil || v == nil {
			continue
		}
		var m expiryMark
		if json.Unmarshal(v, &m) == nil && m.Horizon != 0 {
			c.expired.marks[k] = m
		}
	}
}

// saveExpiries persists the marks of keys as they are now (a removed one
// is deleted), and the index of the marks' keys (a handful at most).
func (c *Cluster) saveExpiries(keys ...string) error {
	c.expired.persist.Lock()
	defer c.expired.persist.Unlock()
	c.expired.mu.Lock()
	vals := make([][]byte, len(keys))
	for i, k := range keys {
		if m, ok := c.expired.marks[k]; ok {
			vals[i], _ = json.Marshal(m)
		}
	}
	index := make([]string, 0, len(c.expired.marks))
	for k := range c.expired.marks {
		index = append(index, k)
	}
	c.expired.mu.Unlock()
	for i, k := range keys {
		if err := c.ledgerStore().SetValue(keyExpiredPrefix+k, vals[i]); err != nil {
			return err
		}
	}
	b, _ := json.Marshal(index)
	return c.ledgerStore().SetValue(keyExpiredPrefix+"index", b)
}

// markOf returns the expiry mark that applies to r, if any.
func (c *Cluster) markOf(r *remote) (expiryMark, bool) {
	c.expired.mu.Lock()
	defer c.expired.mu.Unlock()
	if m, ok := c.expired.marks[r.identity()]; ok {
		return m, true
	}
	m, ok := c.expired.marks["url "+r.URL]
	return m, ok
}

// markOfNode returns the expiry mark of a node identity, if any.
func (c *Cluster) markOfNode(node string) (expiryMark, bool) {
	if node == "" {
		return expiryMark{}, false
	}
	c.expired.mu.Lock()
	defer c.expired.mu.Unlock()
	if m, ok := c.expired.marks["node "+node]; ok {
		return m, true
	}
	for _, m := range c.expired.marks {
		if m.Node == node {
			return m, true
		}
	}
	return expiryMark{}, false
}

// unnamedMarks returns the listed peers marked expired under their URL
// alone: this node marked them before it learned their identity (a peer
// down since before this node last started).
func (c *Cluster) unnamedMarks() []*remote {
	c.expired.mu.Lock()
	defer c.expired.mu.Unlock()
	if len(c.expired.marks) == 0 {
		return nil // every internal request asks: the usual answer is quick
	}
	var unnamed []*remote
	for _, r := range c.mem.Load().remotes {
		if _, ok := c.expired.marks["url "+r.URL]; ok && r.NodeID() == "" && !r.Self() {
			unnamed = append(unnamed, r)
		}
	}
	return unnamed
}

// markOfUnknown reports whether the node identity from is none of the
// listed peers' while some peer is marked under its URL alone: from may
// be that peer.
func (c *Cluster) markOfUnknown(from string) bool {
	return from != "" && len(c.unnamedMarks()) > 0 && c.mem.Load().byIdentity("node "+from) == nil
}

// identifyLoop asks each peer of unnamedMarks who it is, at once when
// one may be talking to this node (markOfUnknown) and every anti-entropy
// interval otherwise: any answer names the peer (learned then moves its
// mark under its identity, which other nodes hear of: X-Dtfc-Marks),
// and the request tells it it is expired, so that it resyncs. Nothing
// else would ask it: anti-entropy leaves a marked peer alone, a pusher
// with nothing to send asks nothing, and this node's answers tell a
// node it is expired only by its identity
// (e2e/TestExpiredBeforeIdentified).
func (c *Cluster) identifyLoop(ctx context.Context) {
	for {
		wake := c.identifySig.Wait()
		for _, r := range c.unnamedMarks() {
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			r.node.Stat(actx, dtfc.ID{}) // the answer itself says nothing
			cancel()
		}
		t := time.NewTimer(c.opts.AntiEntropyInterval)
		select {
		case <-wake:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		t.Stop()
		// At most one round a second, however often it is asked.
		if sleep.For(ctx, time.Second) != nil {
			return
		}
	}
}

// expiredNodes lists the identities of the nodes this node marked
// expired (what a resyncing peer must not take their word from).
func (c *Cluster) expiredNodes() []string {
	c.expired.mu.Lock()
	defer c.expired.mu.Unlock()
	var out []string
	for _, m := range c.expired.marks {
		if m.Node != "" {
			out = append(out, m.Node)
		}
	}
	return out
}

// applyMarks tells every remote whether it is marked.
func (c *Cluster) applyMarks() {
	for _, r := range c.mem.Load().remotes {
		m, ok := c.markOf(r)
		if !ok {
			m = expiryMark{}
		}
		r.setExpired(m)
	}
	c.metrics.setExpired(c.mem.Load().remotes)
}

// markExpired marks r expired, durably, with the greatest clock of what
// is about to be forgotten without its acknowledgement (or raises the
// horizon of its mark). It runs before anything is forgotten.
func (c *Cluster) markExpired(r *remote, horizon dtfc.Timestamp) error {
	old, had := c.markOf(r)
	if had && old.Horizon >= horizon {
		return nil
	}
	m := expiryMark{URL: r.URL, Node: r.NodeID(), Horizon: horizon, Since: c.ackedAt(r.URL)}
	if had {
		m.Since = old.Since
	}
	key := r.identity()
	c.expired.mu.Lock()
	prev, hadKey := c.expired.marks[key]
	moved := !hadKey && had
	if moved {
		delete(c.expired.marks, "url "+r.URL) // moved under the node identity
	}
	c.expired.marks[key] = m
	c.expired.mu.Unlock()
	keys := []string{key}
	if moved {
		keys = append(keys, "url "+r.URL)
	}
	if err := c.saveExpiries(keys...); err != nil {
		c.expired.mu.Lock()
		if hadKey {
			c.expired.marks[key] = prev
		} else {
			delete(c.expired.marks, key)
		}
		c.expired.mu.Unlock()
		return err
	}
	c.applyMarks()
	if !had {
		c.log.Warn("peer expired: it has not acknowledged deletes for longer than tombstone_expiry; they are forgotten here, and it must resync when it returns",
			"peer", r.URL, "node", m.Node, "last_caught_up", m.Since, "expiry", c.opts.TombstoneExpiry)
	}
	return nil
}

// clearExpired lifts the mark of the node identity node if the node
// resynced against a horizon at least as great as the mark's.
func (c *Cluster) clearExpired(node string, horizon dtfc.Timestamp) bool {
	c.expired.mu.Lock()
	var key string
	for k, m := range c.expired.marks {
		if m.Node == node || k == "node "+node {
			if horizon < m.Horizon {
				c.expired.mu.Unlock()
				return false
			}
			key = k
		}
	}
	if key == "" {
		c.expired.mu.Unlock()
		return true // nothing to lift
	}
	m := c.expired.marks[key]
	delete(c.expired.marks, key)
	c.expired.mu.Unlock()
	if err := c.saveExpiries(key); err != nil {
		c.expired.mu.Lock()
		c.expired.marks[key] = m
		c.expired.mu.Unlock()
		c.log.Error("lifting an expiry mark", "node", node, "err", err)
		return false
	}
	c.expired.mu.Lock()
	if c.expired.lifted == nil {
		c.expired.lifted = map[string]time.Time{}
	}
	now := c.opts.Wall()
	c.expired.lifted[key], c.expired.lifted["node "+node] = now, now
	c.expired.mu.Unlock()
	c.applyMarks()
	c.log.Info("peer resynced; its expiry is lifted", "peer", m.URL, "node", node)
	// Its pushers go on at once: what it has not accepted yet would have
	// it marked again after the grace.
	for _, r := range c.mem.Load().remotes {
		if r.identity() == "node "+node {
			r.wake()
		}
	}
	return true
}

// sharedURL logs (once in sharedURLWindow) that the peer list entry r
// reaches more than one node.
func (c *Cluster) sharedURL(r *remote, ids []string) {
	c.log.Error("a peer list entry reaches more than one node by turns (a load balancer, or a name that moves between hosts): list each node under a URL of its own; what this node counts as the entry's acknowledgements and replicas may be any one of them's",
		"url", r.URL, "nodes", strings.Join(ids, ","))
}

// learned is told that r's identity or role became known: a mark made
// under its URL is moved under its node identity, and a peer list entry
// that is this node itself, or whose role differs, is reported once.
func (c *Cluster) learned(r *remote) {
	if r.Self() {
		c.log.Warn("a peer list entry reaches this node itself (under another URL than --me); it is ignored", "url", r.URL)
	}
	if rep := r.reported(); rep != "" && r.Role != "" && rep != r.Role {
		c.log.Warn("a peer's role differs from the peer list's; the peer's own word is used", "peer", r.URL, "listed", r.Role, "reported", rep)
	}
	node := r.NodeID()
	if node == "" {
		return
	}
	c.expired.mu.Lock()
	m, moved := c.expired.marks["url "+r.URL]
	moved = moved && m.Node == ""
	if moved {
		m.Node = node
		delete(c.expired.marks, "url "+r.URL)
		// The node may be marked already, under another of its URLs
		// (each URL's pusher has its own cursor, so each mark its own
		// horizon): one mark, with the greater horizon, so that a
		// resync against the lesser one does not lift it.
		if had, ok := c.expired.marks["node "+node]; ok {
			m.Horizon = max(m.Horizon, had.Horizon)
			if m.Since.IsZero() || (!had.Since.IsZero() && had.Since.Before(m.Since)) {
				m.Since = had.Since
			}
		}
		c.expired.marks["node "+node] = m
	}
	c.expired.mu.Unlock()
	if moved {
		if err := c.saveExpiries("url "+r.URL, "node "+node); err != nil {
			c.log.Error("persisting an expiry mark", "peer", r.URL, "err", err)
		}
	}
	c.applyMarks()
	c.wakePushers()
	if c.members.inUse() {
		// A file's entry now has an identity: a member record of the
		// same node is no longer a peer of its own.
		c.applyPeers()
	}
}

// ackedAt returns when the peer at url was last known to be caught up with
// this node's feed (zero if never).
func (c *Cluster) ackedAt(url string) time.Time {
	if p := c.pushers.get(url); p != nil {
		if t := p.ackedAt.Load(); t != nil {
			return *t
		}
	}
	return c.storedAckedAt(url)
}

func (c *Cluster) storedAckedAt(url string) time.Time {
	v, err := c.ledgerStore().Value(keyAckedAtPrefix + url)
	if err != nil || v == nil {
		return time.Time{}
	}
	ms, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// peerAck is a peer and how far it has accepted the feed, at one moment.
type peerAck struct {
	r      *remote
	cursor uint64
}

// acks snapshots every peer's cursor but this node's own (listed under
// another URL). A snapshot only lags: it holds back more, never less.
func (c *Cluster) acks() []peerAck {
	var peers []peerAck
	for _, r := range c.mem.Load().remotes {
		if !r.Self() {
			peers = append(peers, peerAck{r, c.cursorOf(r.URL)})
		}
	}
	return peers
}

// markLate marks expired, before anything goes, every peer that has not
// acknowledged something old enough to forget (its clock before horizon)
// that has been in this node's feed for longer than the expiry (its
// sequence number at most expirySeq), with the greatest clock of those.
//
// Never an archive: a node marked expired resyncs when it returns, but a
// bucket does not, and any node may read it, a new one from its start.
// A delete forgotten without the bucket's record would leave its upload's
// record the newest there, and a node whose only peer is the bucket
// would take the file back. So a delete waits for every archive in the
// list, however long it is down (API.md, Consistency 8: "every peer in
// the list has acknowledged it"); an archive given up for good is taken
// out of the peer list, and its prefix not used again.
//
// A peer whose mark was lifted less than an expiry ago (it resynced) is
// not marked again: its cursor here has not caught up yet, and marking
// it again at once had it resync again and again (a full comparison of
// the collection each time). Marking it later only delays forgetting.
func (c *Cluster) markLate(horizon dtfc.Timestamp, expirySeq uint64, peers []peerAck) error {
	now := c.opts.Wall()
	var waiting []peerAck
	for _, p := range peers {
		if !c.expired.recentlyLifted(p.r.identity(), now, c.opts.TombstoneExpiry) {
			waiting = append(waiting, p)
		}
	}
	peers = waiting
	late := map[*remote]dtfc.Timestamp{}
	var newest dtfc.Timestamp // of everything old enough to forget
	err := c.ledgerStore().Forgettable(horizon, func(seq uint64, clock dtfc.Timestamp) {
		newest = max(newest, clock)
		if seq > expirySeq {
			return
		}
		for _, p := range peers {
			if p.cursor < seq && clock > late[p.r] && !p.r.Peer.IsArchive() {
				late[p.r] = clock
			}
		}
	})
	if err != nil {
		return err
	}
	for r, horizon := range late {
		if err := c.markExpired(r, horizon); err != nil {
			return fmt.Errorf("marking %s expired: %w", r.URL, err)
		}
	}
	return c.markRemoved(newest)
}

// markRemoved marks every member removed less than tombstone_expiry ago
// expired up to newest: whatever is forgotten from now on is forgotten
// without it (a removed member no longer holds anything back), so if it
// is added again it must resync before anything it offers is taken. A
// member removed longer ago than that cannot be added again (AddMember):
// the memory of what was forgotten meanwhile may be gone.
func (c *Cluster) markRemoved(newest dtfc.Timestamp) error {
	if newest == 0 {
		return nil
	}
	wall := c.opts.Wall()
	for _, m := range c.members.list() {
		if !m.Removed || m.Node == c.ledgerStore().NodeID() || wall.Sub(m.Clock.Time()) > c.opts.TombstoneExpiry {
			continue
		}
		key := "node " + m.Node
		c.expired.mu.Lock()
		old, had := c.expired.marks[key]
		if had && old.Horizon >= newest {
			c.expired.mu.Unlock()
			continue
		}
		mark := expiryMark{URL: m.URL, Node: m.Node, Horizon: newest, Since: m.Clock.Time()}
		c.expired.marks[key] = mark
		c.expired.mu.Unlock()
		if err := c.saveExpiries(key); err != nil {
			return fmt.Errorf("marking removed member %s expired: %w", m.URL, err)
		}
		if !had {
			c.log.Info("a removed member is marked expired: deletes are forgotten without it, and it must resync if it is added again", "url", m.URL, "node", m.Node)
		}
	}
	return nil
}

// mayForget is the rule PurgeTombstones and PurgeLifts apply to each entry
// old enough: forget it only if every peer has accepted it, or is marked
// expired with a horizon that covers it (markLate marked those that had
// the expiry to accept it; an entry learned again after this node forgot
// it goes at once if the mark covers it).
func (c *Cluster) mayForget(peers []peerAck) func(seq uint64, clock dtfc.Timestamp) bool {
	return func(seq uint64, clock dtfc.Timestamp) bool {
		for _, p := range peers {
			if p.cursor >= seq {
				continue
			}
			if m, ok := c.markOf(p.r); !ok || m.Horizon < clock {
				return false
			}
		}
		return true
	}
}

// feedClock dates the change feed coarsely: how far it reached at some
// moments. The expiry counts from when an entry entered this node's feed
// (a delete that arrives late, with an old clock, gives every peer the
// whole expiry to acknowledge it), so "older than the expiry" is "at or
// before the feed position reached expiry ago". Persisted, so a restart
// does not make everything look new (which would only delay).
//
// It counts only time this node was running: a peer cannot acknowledge
// what a stopped node does not send, so a node back from a long stop
// (or whose wall clock jumped ahead) must not mark its peers expired for
// its own absence. A gap between two dates longer than the purge period
// allows is taken out: the dates before it move forward by its excess.
type feedClock struct {
	mu     sync.Mutex
	points []feedPoint // oldest first
}

type feedPoint struct {
	At  time.Time `json:"at"`
	Seq uint64    `json:"seq"`
}

const keyFeedClock = "feed_clock"

func (c *Cluster) loadFeedClock() {
	v, err := c.ledgerStore().Value(keyFeedClock)
	if err != nil || v == nil {
		return
	}
	_ = json.Unmarshal(v, &c.feedClock.points)
}

// tickFeedClock records where the feed is now, drops the points no
// longer needed (all but the newest one older than the expiry), persists
// them, and returns the feed position reached an expiry ago (0: none
// known that old).
func (c *Cluster) tickFeedClock(now time.Time) uint64 {
	fc := &c.feedClock
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if n := len(fc.points); n > 0 {
		// The purge runs every purgeEvery, late by a few ticks at worst.
		allowed := 2*c.purgeEvery() + 10*time.Second
		if gap := now.Sub(fc.points[n-1].At); gap > allowed {
			c.log.Info("this node was stopped (or its clock jumped) since it last dated its feed: the time does not count against its peers' expiry",
				"gap", gap.Round(time.Second))
			for i := range fc.points {
				fc.points[i].At = fc.points[i].At.Add(gap - c.purgeEvery())
			}
		}
	}
	fc.points = append(fc.points, feedPoint{At: now, Seq: c.ledgerStore().LastSeq()})
	cutoff := now.Add(-c.opts.TombstoneExpiry)
	var seq uint64
	keep := 0
	for i, p := range fc.points {
		if p.At.After(cutoff) {
			break
		}
		seq, keep = p.Seq, i
	}
	fc.points = append(fc.points[:0], fc.points[keep:]...)
	if b, err := json.Marshal(fc.points); err == nil {
		if err := c.ledgerStore().SetValue(keyFeedClock, b); err != nil {
			c.log.Warn("persisting the feed's dates", "err", err)
		}
	}
	return seq
}
