package peer

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
)

// A node marks a peer expired when it forgets deletes (or lifts) the peer
// never acknowledged (acks.go), and only the two of them know of it. A
// third node that never had those deletes, one that joined after they
// were forgotten, would take the expired peer's copies of the deleted
// files (its pushes, its states, its blobs on a miss) and hand them on to
// the very nodes that forgot the deletes: a resurrection
// (e2e/TestExpiredNodeMeetsANewNode). So every node-to-node request and
// answer names the nodes its sender marked (HeaderMarks), and a node takes
// nothing from a peer another listed peer marked, as if it had marked the
// peer itself, until that mark is lifted (the marked node resynced against
// it) and the marker says so. It does not mark the peer in its own name:
// it forgot nothing the peer missed, and the peer resyncs against the
// marker alone.
//
// What is heard is kept, each change written to the store (marks change
// seldom), so that a node restarted when the marked node returns still
// heeds the marks before it has heard from their markers again.

const (
	// maxHeardSources bounds the senders whose marks are kept: a
	// cluster without a secret hears from anyone, under any name.
	maxHeardSources = 1024
	// maxHeardMarks bounds the marks taken from one header.
	maxHeardMarks = 256
	// keyHeardMarks is where the marks heard from listed peers are kept
	// (JSON: identity → identities it marked).
	keyHeardMarks = "heard marks"
)

// heardMarks is, by sender identity, the node identities each sender
// last said it marked expired.
type heardMarks struct {
	mu sync.Mutex
	by map[string]map[string]bool
	// loaded are the sources read from the store at start: heeded
	// before their remotes know their identities again.
	loaded map[string]bool
	// persist serialises the writes of the marks to the store; mu is
	// never held across one.
	persist sync.Mutex
}

// heard records what source said in HeaderMarks (v, possibly empty: it
// marks no one now), and reports whether that changed what is known.
func (h *heardMarks) heard(source, v string) bool {
	if source == "" {
		return false
	}
	var marks map[string]bool
	for n := range strings.SplitSeq(v, ",") {
		if n = strings.TrimSpace(n); n != "" && len(n) <= 64 && len(marks) < maxHeardMarks {
			if marks == nil {
				marks = map[string]bool{}
			}
			marks[n] = true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old, had := h.by[source]
	if marks == nil {
		delete(h.by, source)
		return had
	}
	if maps.Equal(old, marks) {
		return false
	}
	if h.by == nil {
		h.by = map[string]map[string]bool{}
	}
	if !had && len(h.by) >= maxHeardSources {
		return false // the first ones stay: a listed peer is heard from early
	}
	h.by[source] = marks
	return true
}

// snapshot returns the marks of the sources listed says, each sorted.
func (h *heardMarks) snapshot(listed func(source string) bool) map[string][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]string{}
	for src, marks := range h.by {
		if listed(src) {
			out[src] = slices.Sorted(maps.Keys(marks))
		}
	}
	return out
}

// markedBy returns a sender other than node itself that marked node
// expired, among those listed says (by identity), if any.
func (h *heardMarks) markedBy(node string, listed func(source string) bool) (string, bool) {
	if node == "" {
		return "", false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for src, marks := range h.by {
		if src != node && marks[node] && listed(src) {
			return src, true
		}
	}
	return "", false
}

// marksHeader is HeaderMarks for this node's requests and answers: the
// identities of the nodes it marked expired.
func (c *Cluster) marksHeader() string { return strings.Join(c.expiredNodes(), ",") }

// heardMarks records what a peer (by identity) said it marked, and
// writes what changed to the store.
func (c *Cluster) heardMarks(source, v string) {
	if source == c.store.NodeID() {
		// This node itself, listed under another URL: its own marks
		// are its own (markOfNode), and what it said of them before
		// lifting one must not outlive the lift (soak seed 75).
		return
	}
	if !c.heard.heard(source, v) || !c.listedNode(source) {
		return // unchanged, or a stranger's word: not worth a write
	}
	c.heard.persist.Lock()
	defer c.heard.persist.Unlock()
	// The state as it is now, written under persist: the last write is
	// of the last change.
	b, err := json.Marshal(c.heard.snapshot(c.listedNode))
	if err == nil {
		err = c.ledgerStore().SetValue(keyHeardMarks, b)
	}
	if err != nil {
		c.log.Error("recording the expiry marks peers told of", "err", err)
	}
}

// loadHeardMarks reads the marks heard before the last stop.
func (c *Cluster) loadHeardMarks() {
	v, err := c.ledgerStore().Value(keyHeardMarks)
	if err != nil || v == nil {
		return
	}
	var saved map[string][]string
	if json.Unmarshal(v, &saved) != nil {
		return
	}
	c.heard.loaded = map[string]bool{}
	delete(saved, c.store.NodeID())
	for src, marks := range saved {
		c.heard.heard(src, strings.Join(marks, ","))
		c.heard.loaded[src] = true
	}
}

// listedNode reports whether a peer of this identity is listed. A source
// of the marks read at start counts as listed while some listed peer's
// identity is not known yet (none answered since the start): it may be
// that one.
func (c *Cluster) listedNode(node string) bool {
	m := c.mem.Load()
	if r := m.byIdentity("node " + node); r != nil {
		return !r.Self()
	}
	if !c.heard.loaded[node] {
		return false
	}
	for _, r := range m.remotes {
		if !r.Peer.IsArchive() && r.NodeID() == "" {
			return true
		}
	}
	return false
}

// markedElsewhere reports which listed peer marked the node of this
// identity expired, if one did.
func (c *Cluster) markedElsewhere(node string) (string, bool) {
	return c.heard.markedBy(node, c.listedNode)
}

// distrusts reports whether nothing is to be taken from r: this node
// marked it expired, or another peer did.
func (c *Cluster) distrusts(r *remote) bool {
	if r.isExpired() {
		return true
	}
	_, ok := c.markedElsewhere(r.NodeID())
	return ok
}
