package peer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
)

// Membership without editing files (API.md): every node keeps a record of
// every member it heard of, itself included, keyed by node identity (the
// store's node ID), and exchanges the whole set with every peer (POST
// /_internal/members) at start, on every change and every membersEvery.
// Records merge last writer wins by clock, like states and deny entries.
// A removal is a record too (Removed), and it is never forgotten: there
// are few members, and an old record of a removed node must never bring
// it back. The peers a node works with are the peer list file's entries
// plus the members that are not removed (and not itself).

const (
	keyMembers   = "members"        // the records, JSON
	membersEvery = 10 * time.Second // how often members are exchanged
	// membersAheadWait bounds how long a change of a member waits for a
	// record of it dated further ahead than max_clock_offset
	// (awaitAhead).
	membersAheadWait = 10 * time.Second
)

// membersStore is what membership needs of the blob store: where the
// records are kept, this node's identity and the clock that dates them.
type membersStore interface {
	NodeID() string
	Clock() *dtfc.Clock
	Value(key string) ([]byte, error)
	SetValue(key string, v []byte) error
}

func (c *Cluster) membersStore() membersStore { return c.store }

// Member is a node of the cluster as membership records it.
type Member = api.Member

// members is this node's membership records, with their own lock.
type members struct {
	mu     sync.Mutex
	byNode map[string]Member
	// ahead is, per node, the newest record this node received but
	// refused as dated too far ahead of its clock, when it is newer
	// than the one held: a change of that member made here waits for
	// it (awaitAhead). Kept in memory only: the exchanges send it again.
	ahead map[string]Member
}

// newerMember reports whether a wins over b: the later clock; at equal
// clocks a removal, then the greater URL (any fixed order will do).
func newerMember(a, b Member) bool {
	if a.Clock != b.Clock {
		return a.Clock > b.Clock
	}
	if a.Removed != b.Removed {
		return a.Removed
	}
	return a.URL > b.URL
}

// merge takes the records of in that are newer than those held and
// returns whether any was. A record dated further ahead of clock's wall
// clock than maxAhead is refused (a node whose clock runs a year ahead
// would make its records unremovable), and kept aside in ahead; the
// others are observed by clock, so that a later change here is dated
// after them.
func (ms *members) merge(in []Member, clock *dtfc.Clock, maxAhead time.Duration) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	changed := false
	for _, m := range in {
		if m.Node == "" || m.URL == "" {
			continue
		}
		m.URL = normalizeURL(m.URL)
		if clock != nil {
			if clock.Ahead(m.Clock) > maxAhead {
				ms.keepAhead(m)
				continue
			}
			clock.Observe(m.Clock)
		}
		if cur, ok := ms.byNode[m.Node]; ok && !newerMember(m, cur) {
			continue
		}
		ms.byNode[m.Node] = m
		changed = true
	}
	return changed
}

// keepAhead keeps m, a record refused as dated too far ahead, if it is
// newer than the record held and than the one kept already. ms.mu is
// held.
func (ms *members) keepAhead(m Member) {
	if cur, ok := ms.byNode[m.Node]; ok && !newerMember(m, cur) {
		return
	}
	if prev, ok := ms.ahead[m.Node]; ok && !newerMember(m, prev) {
		return
	}
	if ms.ahead == nil {
		ms.ahead = map[string]Member{}
	}
	ms.ahead[m.Node] = m
}

// pendingAhead returns the records kept aside as dated too far ahead
// that match and are still newer than the records held; it forgets
// those that are not.
func (ms *members) pendingAhead(match func(Member) bool) []Member {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var out []Member
	for node, m := range ms.ahead {
		if cur, ok := ms.byNode[node]; ok && !newerMember(m, cur) {
			delete(ms.ahead, node)
			continue
		}
		if match(m) {
			out = append(out, m)
		}
	}
	return out
}

// list returns the records sorted by URL.
func (ms *members) list() []Member {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	out := make([]Member, 0, len(ms.byNode))
	for _, m := range ms.byNode {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Or(cmp.Compare(a.URL, b.URL), cmp.Compare(a.Node, b.Node)) })
	return out
}

func (ms *members) get(node string) (Member, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m, ok := ms.byNode[node]
	return m, ok
}

// byURL returns the member reached at url that is not removed.
func (ms *members) byURL(url string) (Member, bool) {
	url = normalizeURL(url)
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for _, m := range ms.byNode {
		if m.URL == url && !m.Removed {
			return m, true
		}
	}
	return Member{}, false
}

// loadMembers reads the records, and records this node itself if it
// joins (Join) or is already a member under another URL or role (a member
// is one node: its new URL replaces the old one). A node that was removed
// stays removed until it is added again (PUT /_members on a member). A
// cluster made only of peer list files keeps no records at all, and
// exchanges none.
func (c *Cluster) loadMembers() error {
	c.members.byNode = map[string]Member{}
	v, err := c.membersStore().Value(keyMembers)
	if err != nil {
		return err
	}
	if v != nil {
		var list []Member
		if err := json.Unmarshal(v, &list); err != nil {
			return fmt.Errorf("membership records: %w", err)
		}
		c.members.merge(list, nil, 0)
	}
	if me, ok := c.members.get(c.membersStore().NodeID()); ok && me.Removed {
		c.sayRemoved()
		return nil
	}
	if _, ok := c.members.get(c.membersStore().NodeID()); ok || len(c.opts.Join) > 0 {
		return c.recordSelf()
	}
	return nil
}

// recordSelf records this node as a member under its URL and role, unless
// it is so recorded already or was removed.
func (c *Cluster) recordSelf() error {
	me, ok := c.members.get(c.membersStore().NodeID())
	switch {
	case ok && me.Removed:
		return nil
	case ok && me.URL == c.opts.Me && me.Role == c.opts.Role:
		return nil
	}
	since := time.Now().UTC()
	if ok {
		since = me.Since
	}
	return c.setMember(Member{Node: c.membersStore().NodeID(), URL: c.opts.Me, Role: c.opts.Role, Since: since})
}

// setMember records m with a new clock, persists the records and applies
// them. The clock is after the record of m's node held here (the hybrid
// clock's max(now, held + 1)), whatever the wall clock says: a change
// made after seeing a record orders after it, also when that record was
// dated by a clock running ahead of this one (within max_clock_offset;
// further ahead, awaitAhead waits for it first). The other nodes' records
// are observed as they are merged; this holds for records loaded at
// start too, which the persisted clock may not cover.
func (c *Cluster) setMember(m Member) error {
	clock := c.membersStore().Clock()
	if cur, ok := c.members.get(m.Node); ok {
		clock.Observe(cur.Clock)
	}
	m.Clock = clock.Now()
	c.members.merge([]Member{m}, nil, 0)
	return c.membersChanged()
}

// membersChanged persists the records and recomputes the peers.
func (c *Cluster) membersChanged() error {
	b, err := json.Marshal(c.members.list())
	if err != nil {
		return err
	}
	if err := c.membersStore().SetValue(keyMembers, b); err != nil {
		return err
	}
	c.applyPeers()
	c.membersSig.Notify()
	c.sayRemoved()
	return nil
}

// sayRemoved logs, once per removal, that this node was removed: at a
// start, or when a record of it learned from a peer says so.
func (c *Cluster) sayRemoved() {
	at, removed := c.Removed()
	if !removed {
		c.saidRemoved.Store(false)
		return
	}
	if !c.saidRemoved.Swap(true) {
		c.log.Warn("this node was removed from the cluster: it works alone, with no peer, until a member adds it again (PUT /_members)",
			"removed_at", at)
	}
}

// mergeMembers merges a peer's records, refusing those dated further
// ahead than max_clock_offset.
func (c *Cluster) mergeMembers(in []Member) bool {
	changed := c.members.merge(in, c.membersStore().Clock(), c.opts.MaxClockOffset)
	if me, ok := c.members.get(c.membersStore().NodeID()); changed && ok && !me.Removed && (me.URL != c.opts.Me || me.Role != c.opts.Role) {
		// A node has the last word on its own record, also when a
		// record of it comes in an answer: one naming another URL was
		// made by a copy of its basedir running there (instances.go).
		if err := c.recordSelf(); err != nil {
			c.log.Error("recording this node's own membership record again", "err", err)
		}
	}
	return changed
}

// removed reports whether this node was removed from the cluster.
func (c *Cluster) removed() bool {
	_, removed := c.Removed()
	return removed
}

// Removed reports whether this node was removed from the cluster, and
// when.
func (c *Cluster) Removed() (time.Time, bool) {
	me, ok := c.members.get(c.membersStore().NodeID())
	if !ok || !me.Removed {
		return time.Time{}, false
	}
	return me.Clock.Time(), true
}

// applyPeers sets the peers: the peer list file's entries, then the
// members that are not removed, neither this node nor a node the file
// lists already (by URL, or by the identity its entry answered with: the
// file says how to reach it). A removal wins over the file: an entry that
// answered with the identity of a removed member is left out until the
// member is added again. A removed node has no peers at all: it serves
// what it holds, alone, until it is added again.
func (c *Cluster) applyPeers() {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	var peers []Peer
	if !c.removed() {
		seenURL := map[string]bool{c.opts.Me: true}
		seenNode := map[string]bool{c.membersStore().NodeID(): true}
		var cur *membership
		if cur = c.mem.Load(); cur == nil {
			cur = &membership{}
		}
		for _, p := range c.filePeers {
			// An entry left out has no remote: taken back in at the next
			// recompute, it is a peer again until it answers (a new node
			// may answer at a removed one's URL). A leave does not count
			// what a removed member accepted meanwhile (cursorOf;
			// TestLeaveCountsNoRemovedEntry).
			node := ""
			if r := cur.byURL[p.URL]; r != nil {
				node = r.NodeID()
			}
			if c.removedMember(node) {
				c.log.Debug("a peer list entry is a removed member: left out until it is added again (PUT /_members)", "url", p.URL, "node", node)
				continue
			}
			peers = append(peers, p)
		}
		for _, p := range peers {
			seenURL[p.URL] = true
			if r := cur.byURL[p.URL]; r != nil && r.NodeID() != "" {
				seenNode[r.NodeID()] = true
			}
		}
		for _, m := range c.members.list() {
			if m.Removed || seenNode[m.Node] || seenURL[m.URL] || m.Role == RoleArchive {
				continue
			}
			seenURL[m.URL] = true
			peers = append(peers, Peer{URL: m.URL, Role: m.Role})
		}
	}
	if cur := c.mem.Load(); cur != nil && slices.Equal(cur.peers, peers) {
		return
	}
	c.setPeers(peers)
}

// membersUnaskedIn reports whether a lookup in the membership m could
// not have asked every member: this node was started to join a cluster
// and has not yet, or its records name a member (not removed, not
// itself) that no peer in m is (by URL, or by the identity the peer
// answered with). A removed node has no peers, and says so before any
// lookup.
func (c *Cluster) membersUnaskedIn(m *membership) bool {
	if !c.joined.Load() {
		return true
	}
	if c.removed() {
		return false
	}
	me := c.membersStore().NodeID()
	for _, mb := range c.members.list() {
		if mb.Removed || mb.Node == me || mb.URL == c.opts.Me || m.byURL[mb.URL] != nil {
			continue
		}
		if !slices.ContainsFunc(m.remotes, func(r *remote) bool { return r.NodeID() == mb.Node }) {
			return true
		}
	}
	return false
}

// inUse reports whether this node keeps membership records.
func (ms *members) inUse() bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return len(ms.byNode) > 0
}

// Members returns the membership records, removals included.
func (c *Cluster) Members() []Member { return c.members.list() }

// membersLoop exchanges the records with every peer now, on every change,
// and every membersEvery; and with the nodes to join through (Join) every
// second until one of them answered (a node started with the ones it
// joins may come up before them).
func (c *Cluster) membersLoop(ctx context.Context) {
	joined := len(c.opts.Join) == 0
	for {
		changed := c.membersSig.Wait()
		if (c.members.inUse() || !joined) && c.exchangeAll(ctx, !joined) {
			joined = true
			c.joined.Store(true)
		}
		every := membersEvery
		if !joined {
			every = time.Second
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// exchangeAll exchanges the records with every peer, every member that
// is not removed (a removed node tells the others it left, and learns if
// it was added again), and the join URLs when join is set; it reports
// whether one of those answered.
func (c *Cluster) exchangeAll(ctx context.Context, join bool) (joined bool) {
	joined, _ = c.exchangeCount(ctx, join)
	return joined
}

// exchangeCount is exchangeAll; it also returns how many answered.
func (c *Cluster) exchangeCount(ctx context.Context, join bool) (joined bool, answered int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	joinURL := map[string]bool{}
	for _, u := range c.opts.Join {
		joinURL[normalizeURL(u)] = true
	}
	targets := map[string]*remote{}
	for _, r := range c.mem.Load().remotes {
		if !r.Self() && !r.Peer.IsArchive() {
			targets[r.URL] = r
		}
	}
	// The members no peer reaches at their URL, and the nodes to join
	// through, are asked through remotes made for this exchange, with
	// the member's role (a cache's remote made as a replica's would warn
	// of a role that differs from the list's at every exchange; a node to
	// join through has none yet).
	var extra []Peer
	for _, m := range c.members.list() {
		if !m.Removed && m.Node != c.membersStore().NodeID() {
			extra = append(extra, Peer{URL: m.URL, Role: m.Role})
		}
	}
	if join {
		for _, u := range c.opts.Join {
			extra = append(extra, Peer{URL: u})
		}
	}
	for _, p := range extra {
		p.URL = normalizeURL(p.URL)
		if targets[p.URL] == nil && p.URL != c.opts.Me {
			targets[p.URL] = c.newRemote(p)
		}
	}
	for _, r := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.exchange(ctx, r)
			if err == nil {
				mu.Lock()
				answered++
				mu.Unlock()
			}
			switch {
			case err == nil && join && joinURL[r.URL]:
				mu.Lock()
				joined = true
				mu.Unlock()
				c.log.Info("joined the cluster", "through", r.URL, "members", len(c.members.list()))
			case err != nil && join && joinURL[r.URL] && ctx.Err() == nil:
				c.log.Warn("joining the cluster: retrying every second", "through", r.URL, "err", err)
			case err != nil && ctx.Err() == nil:
				c.log.Debug("exchanging members", "peer", r.URL, "err", err)
			}
		}()
	}
	wg.Wait()
	return joined, answered
}

// exchange sends this node's records to r and merges its answer; it
// returns r's node identity.
func (c *Cluster) exchange(ctx context.Context, r *remote) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	mp, ok := r.node.(memberPeer)
	if !ok {
		return "", errors.New("this peer does not exchange members")
	}
	ans, err := mp.Members(ctx, membersMessage{Node: c.membersStore().NodeID(), Members: c.members.list()})
	if err != nil {
		return "", err
	}
	if c.mergeMembers(ans.Members) {
		if err := c.membersChanged(); err != nil {
			return ans.Node, err
		}
	}
	return ans.Node, nil
}

// memberPeer is a peer that exchanges membership records.
type memberPeer interface {
	Members(ctx context.Context, msg membersMessage) (membersMessage, error)
}

// hMembers is the node-to-node exchange: it merges the sender's records
// and answers with its own.
func (c *Cluster) hMembers(w http.ResponseWriter, r *http.Request) {
	var in membersMessage
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<20)).Decode(&in); err != nil {
		writeErr(w, http.StatusBadRequest, "members: "+err.Error())
		return
	}
	changed := c.mergeMembers(in.Members)
	if len(in.Members) > 0 {
		// Someone uses membership (joins through this node, or gossips):
		// this node is a member too, under its own URL.
		if err := c.recordSelf(); err != nil {
			writeErr(w, http.StatusInternalServerError, err.Error())
			return
		}
	}
	if changed {
		if err := c.membersChanged(); err != nil {
			writeErr(w, http.StatusInternalServerError, err.Error())
			return
		}
	}
	writeJSON(w, http.StatusOK, membersMessage{Node: c.membersStore().NodeID(), Members: c.members.list()})
}

// ErrMemberAhead means a change of a member was not made: this node
// received a newer record of that member dated further ahead of its
// clock than max_clock_offset allows, by more than membersAheadWait, so
// the change could only be dated before it, and be undone by it.
var ErrMemberAhead = errors.New("a newer record of that member is dated too far ahead of this node's clock")

// awaitAhead makes sure a change of a member about to be made here orders
// after every record of it this node received. A record it refused as
// dated further ahead than max_clock_offset (a node whose clock runs
// ahead removed or added the member) is waited for until it is within
// the offset, then taken, so that setMember dates the change after it:
// dated by this node's clock, the change would lose to that record
// once the others take it, and the operator's acknowledged change would
// be undone (soak seed 79: a node 6 s ahead left, was added again a
// moment later, and its removal won). A wait longer than
// membersAheadWait answers ErrMemberAhead. match chooses the records.
func (c *Cluster) awaitAhead(ctx context.Context, match func(Member) bool) error {
	clock := c.membersStore().Clock()
	pending := c.members.pendingAhead(match)
	// The nearest first: one too far ahead to wait for ends the wait
	// after those that were not.
	slices.SortFunc(pending, func(a, b Member) int { return cmp.Compare(a.Clock, b.Clock) })
	for _, m := range pending {
		if wait := clock.Ahead(m.Clock) - c.opts.MaxClockOffset; wait > 0 {
			c.log.Info("a record of the member is dated too far ahead of this node's clock: the change waits for it", "url", m.URL, "node", m.Node, "wait", wait.Round(time.Millisecond))
		}
		switch err := clock.AwaitWithin(ctx, m.Clock, c.opts.MaxClockOffset, membersAheadWait); {
		case errors.Is(err, dtfc.ErrFarAhead):
			what := "added"
			if m.Removed {
				what = "removed"
			}
			wait := clock.Ahead(m.Clock) - c.opts.MaxClockOffset
			return fmt.Errorf("%w: %s (node %s) was %s by a node whose clock runs ahead, at %s, %s ahead of this node's clock (max_clock_offset %s); a change made now would be dated before it and undone by it: retry in %s, and set that node's clock right",
				ErrMemberAhead, m.URL, m.Node, what, m.Clock.Time().UTC().Format(time.RFC3339Nano),
				clock.Ahead(m.Clock).Round(time.Millisecond), c.opts.MaxClockOffset, wait.Round(time.Second))
		case err != nil:
			return err
		}
		if c.mergeMembers([]Member{m}) {
			if err := c.membersChanged(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ErrNotMember means no member is reached at that URL.
var ErrNotMember = errors.New("no member is reached at that URL")

// ErrMemberRole means the node at the URL has another role than asked.
var ErrMemberRole = errors.New("the node has another role")

// ErrRemovedTooLong means the node was removed longer than
// tombstone_expiry ago: deletes it never saw may be forgotten by now, and
// its files could bring them back. It must join again as a new node.
var ErrRemovedTooLong = errors.New("removed longer than tombstone_expiry ago")

// AddMember adds the node reached at url: it asks the node for its
// records (learning its identity), and records it as a member, again if
// it had been removed. role, if set, must be the node's own.
func (c *Cluster) AddMember(ctx context.Context, url string, role dtfc.Role) (Member, error) {
	if err := c.checkClockBehind(); err != nil {
		return Member{}, err
	}
	url = normalizeURL(url)
	if err := c.recordSelf(); err != nil {
		return Member{}, err
	}
	// Made for this exchange, with the role asked for if any: a role
	// assumed here would be warned of as differing from the list's.
	r := c.newRemote(Peer{URL: url, Role: role})
	node, err := c.exchange(ctx, r)
	if err != nil {
		return Member{}, fmt.Errorf("asking %s for its identity: %w", url, err)
	}
	if node == "" {
		return Member{}, fmt.Errorf("%s did not say which node it is", url)
	}
	// A record of the node dated too far ahead to wait for refuses the
	// addition (ErrMemberAhead), as a removal: dated before it, the
	// addition would be undone by it, at once if this node's clock is
	// the one behind (TestMemberAddOnNodeBehindRefused; it went ahead).
	if err := c.awaitAhead(ctx, func(m Member) bool { return m.Node == node }); err != nil {
		return Member{}, err
	}
	m, ok := c.members.get(node)
	if !ok || m.Role == "" {
		m = Member{Node: node, Role: cmp.Or(role, RoleReplica), Since: time.Now().UTC()}
	}
	if role != "" && m.Role != role {
		return Member{}, fmt.Errorf("%w: %s is a %s, not a %s", ErrMemberRole, url, m.Role, role)
	}
	if m.Removed && c.opts.Wall().Sub(m.Clock.Time()) > c.opts.TombstoneExpiry {
		return Member{}, fmt.Errorf("%w: %s (node %s) was removed at %s; deletes it never saw may be forgotten since: empty its basedir and join it as a new node",
			ErrRemovedTooLong, url, node, m.Clock.Time().UTC().Format(time.RFC3339))
	}
	if m.Removed || !ok {
		m.Since = time.Now().UTC()
	}
	m.URL, m.Removed = url, false
	if err := c.setMember(m); err != nil {
		return Member{}, err
	}
	c.log.Info("member added", "url", url, "node", node, "role", m.Role)
	c.tellMembers(ctx, "addition", m)
	got, _ := c.members.get(node)
	return got, nil
}

// tellMembers passes a change of membership on to the members at once,
// before the request that made it is answered: a node that leaves and is
// stopped right after (as an operator does) must not take the only record
// of its removal down with it. A change no member took yet is retried by
// the members loop, every membersEvery, while this node runs.
func (c *Cluster) tellMembers(ctx context.Context, what string, m Member) {
	if _, n := c.exchangeCount(ctx, false); n == 0 && len(c.members.list()) > 1 {
		c.log.Warn("no member could be told of this "+what+" yet; it is retried every 10 s while this node runs (keep it running until one has it)",
			"url", m.URL, "node", m.Node)
	}
}

// ErrNotDrained means this node cannot leave yet: no replica peer has
// accepted all of its feed.
var ErrNotDrained = errors.New("this node cannot leave yet")

// RemoveMember removes the member reached at url: it is no longer pushed
// to, what it alone had not acknowledged may be forgotten, and its own
// pushes are refused until it is added again. A node that removes itself
// first waits until a replica peer accepted its whole feed (an upload it
// alone holds would be stranded), unless force. A newer record of the
// member dated too far ahead to wait for answers ErrMemberAhead, unless
// force. (AddMember goes ahead in that case.)
func (c *Cluster) RemoveMember(ctx context.Context, url string, force bool) (Member, error) {
	if err := c.checkClockBehind(); err != nil && !force {
		return Member{}, err
	}
	// A record dated ahead may be the member's addition, or its move to
	// this URL: wait for it before looking the URL up. With force, one
	// too far ahead to wait for does not hold the removal back (a node
	// whose clock ran a year ahead must still be removable); that
	// record wins once real time reaches it.
	nurl := normalizeURL(url)
	held, _ := c.members.byURL(nurl)
	err := c.awaitAhead(ctx, func(m Member) bool { return m.URL == nurl || m.Node == held.Node })
	switch {
	case errors.Is(err, ErrMemberAhead) && force:
		c.log.Warn("removing a member anyway (force): a newer record of it is dated too far ahead to wait for, and wins once real time reaches it", "url", nurl, "err", err)
	case err != nil:
		return Member{}, err
	}
	m, ok := c.members.byURL(url)
	if !ok {
		return Member{}, ErrNotMember
	}
	self := m.Node == c.membersStore().NodeID()
	if self {
		// No upload or delete commits here between the check of the
		// queues and the record of the removal (Admit): one in flight
		// was acknowledged after the leave was taken, on no other node
		// (TestLeaveRacesAnUploadInFlight).
		c.commitMu.Lock()
	}
	if self && !force {
		// One replica that took the whole feed is enough: it passes
		// every operation on to the others (what it accepts enters its
		// own feed), so nothing is stranded when this node goes. Waiting
		// for every replica would keep a busy node, or one with a peer
		// behind a partition, from ever leaving.
		pending := int64(-1)
		reps := c.replicaPeers()
		for _, r := range reps {
			if n, _ := c.queue(r); pending < 0 || n < pending {
				pending = n
			}
		}
		if len(reps) == 0 && c.store.LastSeq() > 0 {
			// No replica to pass anything on to: what only this node
			// holds would be stranded (TestLastReplicaLeaveRefused).
			c.commitMu.Unlock()
			return Member{}, fmt.Errorf("%w: no replica peer to pass its operations on to; force to leave anyway", ErrNotDrained)
		}
		if pending > 0 {
			c.commitMu.Unlock()
			return Member{}, fmt.Errorf("%w: no replica has accepted all of its operations yet (%d still to pass on to the nearest); wait, or force", ErrNotDrained, pending)
		}
	}
	m.Removed = true
	err = c.setMember(m)
	if self {
		c.commitMu.Unlock()
	}
	if err != nil {
		return Member{}, err
	}
	c.log.Info("member removed", "url", m.URL, "node", m.Node)
	c.tellMembers(ctx, "removal", m)
	got, _ := c.members.get(m.Node)
	return got, nil
}

// ErrRemoved means this node was removed from the cluster: it takes no
// uploads or deletes.
var ErrRemoved = errors.New("this node was removed from the cluster")

// Admit is held around the commit of an upload, delete, block or lift made here (the
// release it returns ends it): ErrRemoved once this node has removed
// itself, so that none is acknowledged after its leave was taken; and
// ErrClockBehind while its clock is behind every peer's (checkClockBehind).
func (c *Cluster) Admit() (func(), error) {
	if err := c.checkClockBehind(); err != nil {
		return nil, err
	}
	c.commitMu.RLock()
	if at, removed := c.Removed(); removed {
		c.commitMu.RUnlock()
		return nil, fmt.Errorf("%w at %s", ErrRemoved, at.UTC().Format(time.RFC3339))
	}
	return c.commitMu.RUnlock, nil
}

// ErrClockBehind means a change was refused because this node's clock is
// behind every peer's it heard from lately by more than max_clock_offset.
var ErrClockBehind = errors.New("this node's clock is behind its peers'")

// checkClockBehind refuses changes made here while this node's wall
// clock is behind every peer's it heard from lately (their answers'
// Date) by more than max_clock_offset: every state the others make is
// then refused here as dated too far ahead, and a change made here after
// one of them, dated by this clock, would be acknowledged and then undone
// by it. The store refuses a change of an ID whose refused state it kept
// (blobstore ErrAheadPending), but keeps 4,096 of them at most, in
// memory (TestClockBehindNodeRefusesEveryChange).
func (c *Cluster) checkClockBehind() error {
	ahead, heard := c.aheadOfPeers()
	if !heard || -ahead <= c.opts.MaxClockOffset {
		return nil
	}
	return fmt.Errorf("%w: it is %s behind every peer it heard from lately (max_clock_offset %s), and a change made here now would be dated before changes made elsewhere and undone by them; set the wrong clock right (this node's, or its peers' if they all run ahead)",
		ErrClockBehind, (-ahead).Round(time.Second), c.opts.MaxClockOffset)
}

// removedBy: a peer refused this node as removed; the records are
// exchanged at once, so that it learns from them.
func (c *Cluster) removedBy(r *remote) {
	if !c.removed() {
		c.membersSig.Notify()
	}
}

// notFromRemoved refuses a removed node's requests, except the exchange
// of members (so that it learns why).
func (c *Cluster) notFromRemoved(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from := r.Header.Get(HeaderFrom)
		if m, ok := c.members.get(from); ok && m.Removed && from != c.membersStore().NodeID() {
			w.Header().Set(HeaderRemoved, m.Clock.Time().UTC().Format(time.RFC3339))
			writeErr(w, http.StatusForbidden, fmt.Sprintf("your node (%s) was removed from the cluster at %s: it gets nothing and may send nothing; to come back, add it again (PUT /_members on a member, or dtfc serve --join after PUT /_members)",
				from, m.Clock.Time().UTC().Format(time.RFC3339)))
			return
		}
		next.ServeHTTP(w, r)
	})
}
