package peer

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Two running nodes with one identity: a basedir copied to seed a new
// node, or a machine cloned, node-id and meta.db with it. Nothing on disk
// tells the copy from the original, and everything keyed by identity
// goes wrong between them: each takes the other for itself and never
// replicates to it, and the other nodes take either one's word for both
// (acknowledgements, expiry marks and their lifting, replica counts). So
// every process draws a random instance token at start and sends it with
// its identity (HeaderInstance, on every node-to-node request and
// answer), and a node finds a clone three ways:
//
//   - an answer or a request carries its own identity and another token;
//   - answers and requests of one identity carry two tokens whose
//     sightings interleave: a process that restarted never sends its old
//     token again after the new one is seen, two processes go on sending
//     both (the last requests of the old process, under way or held up
//     when the new one answered, are allowed for: see outlived);
//   - a peer refuses it for a conflict it found (HeaderConflict).
//
// Then nothing is exchanged with that identity: its requests are refused
// (409, HeaderConflict) and exchanges with it fail, as with a peer cut
// off, whose handling (backoff, expiry marks, resync) is safe. A node
// whose own identity is taken refuses uploads and deletes (503): nothing
// it took would reach the others. The conflict lasts while the other
// token is seen, and for a window after (3 anti-entropy intervals,
// minConflictWindow at least): the operator gives the copy an identity
// of its own (README, "Adding and removing nodes").

// HeaderInstance carries the random token of the process that sent a
// node-to-node request or answer.
const HeaderInstance = "X-Dtfc-Instance"

// HeaderConflict marks the answer of a node that found two running nodes
// with the requester's identity.
const HeaderConflict = "X-Dtfc-Identity-Conflict"

const (
	// cloneMargin: a token seen less than this after another one was
	// first seen may be an old process's last request still under way.
	cloneMargin = 2 * time.Second
	// cloneSightings: how many times each of two tokens must be seen
	// after the other's first sighting (plus cloneMargin), over
	// cloneMargin at least, to be two processes.
	cloneSightings = 2
	// keptSightings is how many sighting times are kept per token.
	keptSightings = 8
	// minConflictWindow bounds how long a conflict lasts after the last
	// sighting from below (3 anti-entropy intervals otherwise): a
	// refused peer retries every 30 s at least (maxBackoff).
	minConflictWindow = 40 * time.Second
	// conflictMemory is how long the tokens of two processes found with
	// one identity are remembered.
	conflictMemory = 24 * time.Hour
)

// newInstanceToken returns a random token for this process.
func newInstanceToken() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// instances tracks which processes send each node identity.
type instances struct {
	own    string        // this process's token
	window time.Duration // how long a sighting keeps a conflict
	now    func() time.Time

	mu     sync.Mutex
	byNode map[string]map[string]*sightings // identity → token → sightings
	// taken: when another process last used this node's identity, by
	// source (an answer or a refusal of the peer at a URL, a request),
	// with what to say of it.
	taken map[string]takenSighting
	// logged: when each identity's conflict was last logged (logDue).
	logged map[string]time.Time
}

type takenSighting struct {
	at    time.Time
	where string
}

type sightings struct {
	first, last time.Time
	conflicted  bool // found with another token of its identity
	// times are the latest sightings at least sampleSightings apart, in
	// a ring: under load a token is seen many times a millisecond.
	times [keptSightings]time.Time
	n     int
}

// sampleSightings is how far apart the kept sightings of a token are.
const sampleSightings = 500 * time.Millisecond

func (s *sightings) add(at time.Time) {
	// Answers are dated when their request was sent, requests when they
	// came: they may be seen out of order.
	if at.Before(s.first) {
		s.first = at
	}
	if at.After(s.last) {
		s.last = at
	}
	if s.n > 0 {
		if d := at.Sub(s.times[(s.n-1)%keptSightings]); d < sampleSightings && d > -sampleSightings {
			return
		}
	}
	s.times[s.n%keptSightings] = at
	s.n++
}

// since counts the kept sightings after t, and returns how far apart
// the first and last of them are.
func (s *sightings) since(t time.Time) (n int, span time.Duration) {
	var first, last time.Time
	for i := 0; i < min(s.n, keptSightings); i++ {
		at := s.times[i]
		if !at.After(t) {
			continue
		}
		n++
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	return n, last.Sub(first)
}

// outlived reports whether s was seen cloneSightings times, over
// cloneMargin at least, after other was first seen (plus cloneMargin):
// requests of a stopped process held up on the way arrive together.
func (s *sightings) outlived(other *sightings) bool {
	n, span := s.since(other.first.Add(cloneMargin))
	return n >= cloneSightings && span >= cloneMargin
}

func newInstances(window time.Duration) *instances {
	return &instances{own: newInstanceToken(), window: window, now: time.Now,
		byNode: map[string]map[string]*sightings{}}
}

// saw records that the process token sent identity node at time at (when
// a request was sent, for its answer; when it came, for a request), and
// reports whether two processes send that identity.
func (in *instances) saw(node, token string, at time.Time) bool {
	if node == "" || token == "" {
		return false // a dtfc from before the tokens, or no identity yet
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	toks := in.byNode[node]
	if toks == nil {
		toks = map[string]*sightings{}
		in.byNode[node] = toks
	}
	s := toks[token]
	if s == nil {
		s = &sightings{first: at}
		toks[token] = s
	}
	s.add(at)
	return in.conflictLocked(node)
}

// conflictLocked reports whether two tokens of node, both seen within
// the window, were each seen cloneSightings times after the other was
// first seen, or were found so before. Tokens not seen within the
// window are dropped, those found in a conflict after conflictMemory: a
// copy cut off for longer than the window is known again at its first
// exchange, not a few seconds later.
func (in *instances) conflictLocked(node string) bool {
	toks := in.byNode[node]
	now := in.now()
	for t, s := range toks {
		if s.last.Before(now.Add(-in.window)) && (!s.conflicted || s.last.Before(now.Add(-conflictMemory))) {
			delete(toks, t)
		}
	}
	if len(toks) == 0 {
		delete(in.byNode, node)
	}
	for t1, s1 := range toks {
		for t2, s2 := range toks {
			if t1 >= t2 || s1.last.Before(now.Add(-in.window)) || s2.last.Before(now.Add(-in.window)) {
				continue
			}
			if s1.conflicted && s2.conflicted {
				return true
			}
			if s1.outlived(s2) && s2.outlived(s1) {
				s1.conflicted, s2.conflicted = true, true
				return true
			}
		}
	}
	return false
}

// conflict reports whether two running processes send identity node.
func (in *instances) conflict(node string) bool {
	if node == "" {
		return false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.conflictLocked(node)
}

// takenBy records that another process uses this node's identity, as
// source (a peer's URL, or "" for a request) shows and where says.
func (in *instances) takenBy(source, where string) {
	in.mu.Lock()
	if in.taken == nil {
		in.taken = map[string]takenSighting{}
	}
	in.taken[source] = takenSighting{in.now(), where}
	in.mu.Unlock()
}

// answered records an answer of the peer at url from another identity,
// or from this very process, taken as such: what url showed before is
// over.
func (in *instances) answered(url string) {
	in.mu.Lock()
	delete(in.taken, url)
	in.mu.Unlock()
}

// ownTaken returns why this node's identity is taken by another running
// process, "" if no source showed it within the window.
func (in *instances) ownTaken() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var last takenSighting
	for src, s := range in.taken {
		if in.now().Sub(s.at) > in.window {
			delete(in.taken, src)
		} else if s.at.After(last.at) {
			last = s
		}
	}
	return last.where
}

func (c *Cluster) instance() string { return c.inst.own }

// errIdentityConflict is an exchange refused or failed for two running
// nodes with one identity.
type errIdentityConflict struct{ msg string }

func (e *errIdentityConflict) Error() string { return e.msg }

// checkAnswer looks at the answer of the peer at url to a request sent at
// sent: an error if it comes from another process with this node's
// identity, from one of two processes with the same identity, or from a
// peer that found this node's identity taken.
func (c *Cluster) checkAnswer(url string, h http.Header, sent time.Time) error {
	node, token := h.Get(HeaderNode), h.Get(HeaderInstance)
	self := c.store.NodeID()
	switch {
	case h.Get(HeaderConflict) != "":
		c.ownIdentityTaken(url, fmt.Sprintf("peer %s sees two running nodes with this node's identity", url))
		return &errIdentityConflict{fmt.Sprintf("peer %s: two running nodes have this node's identity %s", url, self)}
	case node == self && token != "" && token != c.inst.own:
		c.ownIdentityTaken(url, fmt.Sprintf("peer %s answers with this node's identity", url))
		return &errIdentityConflict{fmt.Sprintf("peer %s is another running node with this node's identity %s (a copy of its basedir?)", url, self)}
	case node != self && c.inst.saw(node, token, sent):
		c.identityConflict(node)
		return &errIdentityConflict{fmt.Sprintf("peer %s: two running nodes have the identity %s; nothing is exchanged with either", url, node)}
	}
	c.inst.answered(url)
	return nil
}

// checkRequest looks at a node-to-node request: the reason to refuse it
// if it comes from another process with this node's identity, or from
// one of two processes with the same identity; "" to take it.
func (c *Cluster) checkRequest(r *http.Request) string {
	from, token := r.Header.Get(HeaderFrom), r.Header.Get(HeaderInstance)
	self := c.store.NodeID()
	switch {
	case from == "":
		return ""
	case from == self && token != "" && token != c.inst.own:
		c.ownIdentityTaken("", "a request came from another running node with this node's identity")
		return "you run with this node's identity " + self + ", and so does this node: one of you is a copy of the other's basedir; give the copy an identity of its own (README, \"Adding and removing nodes\")"
	case from != self && c.inst.saw(from, token, time.Now()):
		c.identityConflict(from)
		return "two running nodes have your identity " + from + ": one is a copy of the other's basedir; nothing is taken from either until the copy has an identity of its own (README, \"Adding and removing nodes\")"
	}
	return ""
}

// ownIdentityTaken notes, and logs once per conflict, that another
// running node has this node's identity.
func (c *Cluster) ownIdentityTaken(source, where string) {
	was := c.inst.ownTaken()
	c.inst.takenBy(source, where)
	if was == "" {
		c.log.Error("another running node has this node's identity (node-id): one of them is a copy of the other's basedir; this node takes no uploads or deletes and exchanges nothing with it until the copy has an identity of its own (README, \"Adding and removing nodes\")",
			"node", c.store.NodeID(), "seen", where)
	}
}

// identityConflict logs, once per minute at most, that two running
// nodes have identity node.
func (c *Cluster) identityConflict(node string) {
	if !c.inst.logDue(node) {
		return
	}
	c.log.Error("two running nodes have one identity (node-id): one is a copy of the other's basedir; nothing is exchanged with either until the copy has an identity of its own (README, \"Adding and removing nodes\")", "node", node)
}

// IdentityConflict says why this node takes no uploads or deletes for a
// copy of it running elsewhere, "" if none was seen lately.
func (c *Cluster) IdentityConflict() string {
	if w := c.inst.ownTaken(); w != "" {
		return "another running node has this node's identity " + c.store.NodeID() + " (" + w + "): one of them is a copy of the other's basedir"
	}
	return ""
}

// logDue reports whether identity node's conflict is due to be logged
// (not in the last minute), and if so notes that it is.
func (in *instances) logDue(node string) bool {
	now := in.now()
	in.mu.Lock()
	defer in.mu.Unlock()
	if last, ok := in.logged[node]; ok && now.Sub(last) < time.Minute {
		return false
	}
	if in.logged == nil {
		in.logged = map[string]time.Time{}
	}
	in.logged[node] = now
	return true
}
