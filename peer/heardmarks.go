package peer

import (
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
// What is heard is kept in memory: a node that restarts takes nothing
// from a marked peer only once it has exchanged with the marker again.

const (
	// maxHeardSources bounds the senders whose marks are kept: a
	// cluster without a secret hears from anyone, under any name.
	maxHeardSources = 1024
	// maxHeardMarks bounds the marks taken from one header.
	maxHeardMarks = 256
)

// heardMarks is, by sender identity, the node identities each sender
// last said it marked expired.
type heardMarks struct {
	mu sync.Mutex
	by map[string]map[string]bool
}

// heard records what source said in HeaderMarks (v, possibly empty: it
// marks no one now).
func (h *heardMarks) heard(source, v string) {
	if source == "" {
		return
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
	if marks == nil {
		delete(h.by, source)
		return
	}
	if h.by == nil {
		h.by = map[string]map[string]bool{}
	}
	if _, ok := h.by[source]; !ok && len(h.by) >= maxHeardSources {
		return // the first ones stay: a listed peer is heard from early
	}
	h.by[source] = marks
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

// heardMarks records what a peer (by identity) said it marked.
func (c *Cluster) heardMarks(source, v string) { c.heard.heard(source, v) }

// markedElsewhere reports which listed peer marked the node of this
// identity expired, if one did.
func (c *Cluster) markedElsewhere(node string) (string, bool) {
	m := c.mem.Load()
	return c.heard.markedBy(node, func(src string) bool { return m.byIdentity("node "+src) != nil })
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
