package peer

import (
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
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
	keyCursorPrefix  = "cursor "  // + peer URL: the peer's acknowledged feed position
	keyAckedAtPrefix = "acked "   // + peer URL: unix ms when the peer last was caught up
	keyExpiredPrefix = "expired " // + identity: an expiryMark
	ackedAtPersist   = time.Minute
)

func cursorKey(url string) string { return keyCursorPrefix + url }

// expiryMark records that this node forgot deletes a peer never
// acknowledged.
type expiryMark struct {
	URL  string `json:"url"`
	Node string `json:"node,omitempty"`
	// Since is the last moment the peer was known to have acknowledged
	// this node's feed: what it held from before may be deleted and
	// forgotten here.
	Since time.Time `json:"since"`
}

// expiries is the set of peers this node marked expired.
type expiries struct {
	mu    sync.Mutex
	marks map[string]expiryMark // by identity ("node <id>" or "url <url>")
}

// loadExpiries reads the marks persisted by earlier runs.
func (c *Cluster) loadExpiries() {
	c.expired.marks = map[string]expiryMark{}
	for _, r := range c.mem.Load().remotes {
		c.loadExpiry("url " + r.URL)
	}
	if v, err := c.store.Value(keyExpiredPrefix + "index"); err == nil && v != nil {
		var keys []string
		if json.Unmarshal(v, &keys) == nil {
			for _, k := range keys {
				c.loadExpiry(k)
			}
		}
	}
}

func (c *Cluster) loadExpiry(key string) {
	v, err := c.store.Value(keyExpiredPrefix + key)
	if err != nil || v == nil {
		return
	}
	var m expiryMark
	if json.Unmarshal(v, &m) == nil && !m.Since.IsZero() {
		c.expired.marks[key] = m
	}
}

// saveExpiriesLocked persists the marks (a handful at most) and the index
// of their keys.
func (c *Cluster) saveExpiryLocked(key string, m *expiryMark) error {
	if m == nil {
		if err := c.store.SetValue(keyExpiredPrefix+key, nil); err != nil {
			return err
		}
	} else {
		b, _ := json.Marshal(m)
		if err := c.store.SetValue(keyExpiredPrefix+key, b); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(c.expired.marks))
	for k := range c.expired.marks {
		keys = append(keys, k)
	}
	b, _ := json.Marshal(keys)
	return c.store.SetValue(keyExpiredPrefix+"index", b)
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
	m, ok := c.expired.marks["node "+node]
	if !ok {
		for _, mm := range c.expired.marks {
			if mm.Node == node {
				return mm, true
			}
		}
	}
	return m, ok
}

// applyMarks tells every remote whether it is marked.
func (c *Cluster) applyMarks() {
	for _, r := range c.mem.Load().remotes {
		m, ok := c.markOf(r)
		if ok {
			r.setExpired(m.Since)
		} else {
			r.setExpired(time.Time{})
		}
	}
	c.metrics.setExpired(c.mem.Load().remotes)
}

// markExpired marks r expired, durably, unless it already is. It is
// called before a tombstone r never acknowledged is forgotten.
func (c *Cluster) markExpired(r *remote) error {
	if _, ok := c.markOf(r); ok {
		return nil
	}
	since := c.ackedAt(r.URL)
	m := expiryMark{URL: r.URL, Node: r.NodeID(), Since: since}
	key := r.identity()
	c.expired.mu.Lock()
	c.expired.marks[key] = m
	err := c.saveExpiryLocked(key, &m)
	if err != nil {
		delete(c.expired.marks, key)
	}
	c.expired.mu.Unlock()
	if err != nil {
		return err
	}
	c.applyMarks()
	c.log.Warn("peer expired: it has not acknowledged deletes for longer than tombstone_expiry; they are forgotten here, and it must resync when it returns",
		"peer", r.URL, "node", m.Node, "last_acknowledged", since, "expiry", c.opts.TombstoneExpiry)
	return nil
}

// clearExpired lifts the mark of the node identity node if it was made
// at since (the peer resynced against it).
func (c *Cluster) clearExpired(node string, since time.Time) bool {
	c.expired.mu.Lock()
	var key string
	for k, m := range c.expired.marks {
		if m.Node == node || k == "node "+node {
			if !m.Since.Equal(since) {
				c.expired.mu.Unlock()
				return false
			}
			key = k
		}
	}
	if key == "" {
		c.expired.mu.Unlock()
		return true // nothing to clear: already lifted
	}
	m := c.expired.marks[key]
	delete(c.expired.marks, key)
	if err := c.saveExpiryLocked(key, nil); err != nil {
		c.expired.marks[key] = m
		c.expired.mu.Unlock()
		c.log.Error("lifting an expiry mark", "node", node, "err", err)
		return false
	}
	c.expired.mu.Unlock()
	c.applyMarks()
	c.log.Info("peer resynced; its expiry is lifted", "peer", m.URL, "node", node)
	return true
}

// learned is told that r's identity or role became known: a mark made
// under its URL is moved under its node identity, and a peer list entry
// that is this node itself is reported once.
func (c *Cluster) learned(r *remote) {
	if r.Self() {
		c.log.Warn("a peer list entry reaches this node itself (under another URL than --me); it is ignored", "url", r.URL)
	}
	if r.reported() != "" && r.reported() != r.Role {
		c.log.Warn("a peer's role differs from the peer list's; the peer's own word is used", "peer", r.URL, "listed", r.Role, "reported", r.reported())
	}
	node := r.NodeID()
	if node == "" {
		return
	}
	c.expired.mu.Lock()
	if m, ok := c.expired.marks["url "+r.URL]; ok && m.Node == "" {
		m.Node = node
		delete(c.expired.marks, "url "+r.URL)
		c.expired.marks["node "+node] = m
		_ = c.saveExpiryLocked("url "+r.URL, nil)
		_ = c.saveExpiryLocked("node "+node, &m)
	}
	c.expired.mu.Unlock()
	c.applyMarks()
	c.wakePushers()
}

// ackedAt returns when the peer at url was last known to be caught up with
// this node's feed (zero if never).
func (c *Cluster) ackedAt(url string) time.Time {
	c.mu.Lock()
	p := c.pushers[url]
	c.mu.Unlock()
	if p != nil {
		if t := p.ackedAt.Load(); t != nil {
			return *t
		}
	}
	return c.storedAckedAt(url)
}

func (c *Cluster) storedAckedAt(url string) time.Time {
	v, err := c.store.Value(keyAckedAtPrefix + url)
	if err != nil || v == nil {
		return time.Time{}
	}
	ms, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// mayForget returns the rule PurgeTombstones and PurgeLifts apply to each
// entry old enough: forget it only if every peer (but this node itself,
// listed under another URL) has accepted it, or it is older than the
// expiry and those that have not are marked expired first.
func (c *Cluster) mayForget(now time.Time) func(seq uint64, clock dtfc.Timestamp) bool {
	expiry := dtfc.TimestampAt(now.Add(-c.opts.TombstoneExpiry))
	type peerAck struct {
		r      *remote
		cursor uint64
	}
	var peers []peerAck
	for _, r := range c.mem.Load().remotes {
		if r.Self() {
			continue
		}
		peers = append(peers, peerAck{r, c.cursorOf(r.URL)})
	}
	return func(seq uint64, clock dtfc.Timestamp) bool {
		var late []*remote
		for _, p := range peers {
			if p.cursor >= seq {
				continue
			}
			if clock >= expiry {
				return false
			}
			late = append(late, p.r)
		}
		for _, r := range late {
			if err := c.markExpired(r); err != nil {
				c.log.Error("marking a peer expired; its deletes are kept", "peer", r.URL, "err", err)
				return false
			}
		}
		return true
	}
}
