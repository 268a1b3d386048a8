package peer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/sleep"
)

// A node resyncs when a peer tells it that it is expired there: the peer
// forgot deletes (or lifts) this node never acknowledged, all of them
// older than the mark's horizon, so what this node holds may be exactly
// what the cluster deleted. Until the resync against that peer is done
// the node offers nothing to it (which would refuse it), and to no one
// else that might import it: its node-to-node routes that hand out blobs
// or states answer 503, and its digests say "resyncing" so that
// anti-entropy imports nothing from it (the digests, state listings and
// lookups stay readable, so that another resyncing node can compare with
// it — a listing imports nothing). It pushes to no peer at all meanwhile:
// one that did not expire it forgot only deletes this node acknowledged,
// but it may have joined after the deletes this node missed were
// forgotten, and hand on what it took to the nodes that forgot them
// (e2e/TestExpiredNodeMeetsANewNode). An upload taken meanwhile
// replicates once the resync is done; and the other nodes take nothing
// from this one while a peer's mark of it stands (heardmarks.go).
//
// The resync drops a live state the expiring peer has no record of when
// it is this node's own upload, or it came from elsewhere and is older
// than the horizon, and the peer says it forgot a newer delete of it —
// unless a healthy replica, one neither side marked expired, still holds
// it. An upload taken while cut off, which the peer never had, survives.
// Whether this node's pusher ever delivered its own upload to the peer
// says nothing: the peer may have had it another way (read from this
// node on a miss, pulled by its anti-entropy, pushed by a third node),
// deleted it and forgotten the delete (e2e/TestExpiredBeforeIdentified).
// It ends only when every step succeeded; a failed step leaves it to
// retry.

// resyncTarget is told that this node resynced against its expiry mark.
type resyncTarget interface {
	Resynced(ctx context.Context, horizon dtfc.Timestamp) error
}

// ResyncState is where the resync state machine stands.
type ResyncState = api.ResyncState

// The states of a resync.
const (
	ResyncInSync   = api.ResyncInSync
	ResyncNeeded   = api.ResyncNeeded
	ResyncRunning  = api.ResyncRunning
	ResyncRetrying = api.ResyncRetrying
)

const keyResync = "resync" // the resync's durable state (resyncSaved)

// expiredAt is one peer's word that this node is expired there.
type expiredAt = api.ExpiredAt

// resyncSaved is what survives a restart: a kill -9 during a resync must
// not come back in sync.
type resyncSaved struct {
	// By are the peers whose expiry this node has yet to resync against,
	// by node identity.
	By map[string]expiredAt `json:"by,omitempty"`
	// Done are the expiries already resynced against, by node identity:
	// a peer that repeats one is told again that it was done.
	Done map[string]expiredAt `json:"done,omitempty"`
}

// resync owns "is this node out of date, with respect to whom, since
// when, and what ends it".
type resync struct {
	mu      sync.Mutex
	state   ResyncState
	since   time.Time // when the current state was entered
	saved   resyncSaved
	lastErr string
	notify  map[string]bool // peers (by identity) to tell "resynced" again
	wake    chan struct{}   // closed and replaced on every change
}

// ResyncStatus describes the resync for /_status.
type ResyncStatus = api.ResyncStatus

func (rs *resync) changedLocked() {
	close(rs.wake)
	rs.wake = make(chan struct{})
}

func (rs *resync) status() ResyncStatus {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	st := ResyncStatus{State: rs.state, Since: rs.since, LastError: rs.lastErr}
	for _, e := range rs.saved.By {
		st.Against = append(st.Against, e)
	}
	sort.Slice(st.Against, func(i, j int) bool { return st.Against[i].URL < st.Against[j].URL })
	return st
}

// holds reports whether a resync is pending or running.
func (rs *resync) holds() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.state != ResyncInSync
}

// missedBefore reports whether a peer ever told this node (since its
// resync state was last lost, with its metadata) that it missed deletes,
// and the newest horizon told: every delete this node missed and a peer
// forgot without its acknowledgement is older.
func (rs *resync) missedBefore() (horizon dtfc.Timestamp, ever bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, m := range []map[string]expiredAt{rs.saved.By, rs.saved.Done} {
		for _, e := range m {
			horizon, ever = max(horizon, e.Horizon), true
		}
	}
	return horizon, ever
}

// changed returns a channel closed at the next change of state.
func (rs *resync) changed() <-chan struct{} {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.wake
}

// resyncStore is what a resync needs of the blob store: the records and blocks to
// weigh against a peer's, the means to forget one, and where the resync
// state is kept.
type resyncStore interface {
	NodeID() string
	Digests() ([256]blobstore.Digest, error)
	States(prefix []byte, fn func(dtfc.State) error) error
	DenyList() ([]blobstore.Deny, error)
	ForgetState(judged dtfc.State) (bool, error)
	ForgetDenyEntry(judged blobstore.Deny) (bool, error)
	Value(key string) ([]byte, error)
	SetValue(key string, v []byte) error
}

func (c *Cluster) resyncStore() resyncStore { return c.store }

// loadResync restores the resync's durable state.
func (c *Cluster) loadResync() {
	rs := &c.resync
	rs.state, rs.since, rs.wake, rs.notify = ResyncInSync, time.Now(), make(chan struct{}), map[string]bool{}
	v, err := c.resyncStore().Value(keyResync)
	if err != nil || v == nil {
		return
	}
	if err := json.Unmarshal(v, &rs.saved); err != nil {
		c.log.Error("reading the resync state; resyncing to be safe", "err", err)
		return
	}
	if len(rs.saved.By) > 0 {
		rs.state = ResyncNeeded
		c.log.Warn("resuming a resync cut short: peers forgot deletes this node never acknowledged", "peers", len(rs.saved.By))
	}
}

func (c *Cluster) saveResyncLocked() error {
	b, err := json.Marshal(c.resync.saved)
	if err != nil {
		return err
	}
	return c.resyncStore().SetValue(keyResync, b)
}

// expiredBy is told that the peer r marked this node expired, horizon
// being the greatest clock of what it forgot without this node's
// acknowledgement.
func (c *Cluster) expiredBy(r *remote, horizon dtfc.Timestamp) {
	if r.Self() {
		return
	}
	key := r.identity()
	rs := &c.resync
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if d, ok := rs.saved.Done[key]; ok && d.Horizon == horizon {
		// Done already; the peer has not heard: tell it again. Only the
		// same horizon is that mark: a mark's horizon never falls while
		// it lasts, but a new mark, after the peer lifted the one this
		// node resynced against, may have a lower one (a delete that
		// reached the peer more than an expiry late, with its old
		// clock, then forgotten): that is news, and taken for the old
		// mark it left a deleted file live here and then everywhere
		// (TestReexpiredWithLowerHorizonResyncs). The price: an answer
		// of the old mark's, from before it grew, arriving late, means
		// one resync more.
		if !rs.notify[key] {
			rs.notify[key] = true
			rs.changedLocked()
		}
		return
	}
	if b, ok := rs.saved.By[key]; ok && b.Horizon >= horizon {
		return
	}
	if rs.saved.By == nil {
		rs.saved.By = map[string]expiredAt{}
	}
	rs.saved.By[key] = expiredAt{URL: r.URL, Horizon: horizon}
	if err := c.saveResyncLocked(); err != nil {
		c.log.Error("persisting the resync state", "err", err)
	}
	if rs.state == ResyncInSync {
		rs.state, rs.since = ResyncNeeded, time.Now()
		c.log.Warn("a peer forgot deletes this node never acknowledged: resyncing before offering it anything",
			"peer", r.URL, "horizon", horizon.Time())
	}
	rs.changedLocked()
}

// resyncLoop runs resyncs when needed and tells the peers when done.
func (c *Cluster) resyncLoop(ctx context.Context) {
	failures := 0
	for {
		rs := &c.resync
		rs.mu.Lock()
		state, wake := rs.state, rs.wake
		notify := len(rs.notify) > 0
		rs.mu.Unlock()
		switch {
		case state == ResyncNeeded || state == ResyncRetrying:
			if err := c.runResync(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				rs.mu.Lock()
				rs.state, rs.since, rs.lastErr = ResyncRetrying, time.Now(), err.Error()
				rs.changedLocked()
				rs.mu.Unlock()
				c.log.Warn("resync failed; retrying", "err", err, "retry_in", backoff(failures))
				if sleep.For(ctx, backoff(failures)) != nil {
					return
				}
				continue
			}
			failures = 0
		case notify:
			c.tellResynced(ctx)
			if sleep.For(ctx, time.Second) != nil {
				return
			}
		default:
			select {
			case <-wake:
			case <-ctx.Done():
				return
			}
		}
	}
}

// runResync is one attempt.
func (c *Cluster) runResync(ctx context.Context) error {
	rs := &c.resync
	rs.mu.Lock()
	rs.state, rs.since = ResyncRunning, time.Now()
	by := make(map[string]expiredAt, len(rs.saved.By))
	for k, v := range rs.saved.By {
		by[k] = v
	}
	rs.changedLocked()
	rs.mu.Unlock()

	m := c.mem.Load()
	candidates := map[dtfc.ID]dtfc.State{}
	denyCandidates := map[dtfc.ID]blobstore.Deny{}
	distrust := map[string]bool{}
	unlisted := map[string]bool{}
	for key, e := range by {
		r := m.byIdentity(key)
		if r == nil {
			// Listed under its URL, its identity not learned yet.
			if u := m.byURL[e.URL]; u != nil && !u.Self() {
				r = u
			}
		}
		if r == nil {
			// The peer left the list (or is not in it yet: a node added
			// again learns its members and its expiries at once):
			// nothing to resync against. Its expiry is dropped, but the
			// peer is not told this node resynced: listed again and
			// still expiring it, it says so again, and the resync runs
			// then.
			c.log.Info("a peer that expired this node is not listed; its expiry is dropped until it says so again", "peer", e.URL)
			unlisted[key] = true
			continue
		}
		expired, err := c.orphansAgainst(ctx, r, e.Horizon, candidates)
		if err != nil {
			return fmt.Errorf("comparing with %s: %w", r.URL, err)
		}
		for _, n := range expired {
			distrust["node "+n] = true
		}
		if err := c.denyOrphansAgainst(ctx, r, e.Horizon, denyCandidates); err != nil {
			return fmt.Errorf("comparing deny lists with %s: %w", r.URL, err)
		}
	}
	if err := c.keepHeldElsewhere(ctx, candidates, distrust); err != nil {
		return err
	}
	if err := c.keepUnlessForgotten(ctx, m, by, candidates); err != nil {
		return err
	}
	for id, st := range candidates {
		// Only the state judged: an upload or delete made here since
		// (the node takes them while it resyncs) is newer news.
		forgot, err := c.resyncStore().ForgetState(st)
		if err != nil {
			return fmt.Errorf("dropping %s: %w", id, err)
		}
		if !forgot {
			continue
		}
		c.metrics.resyncDropped.Inc()
		c.log.Warn("resync dropped a file the cluster deleted and forgot while this node was away",
			"id", id.String(), "uploaded", st.Clock.Time())
	}
	for id, d := range denyCandidates {
		forgot, err := c.resyncStore().ForgetDenyEntry(d)
		if err != nil {
			return fmt.Errorf("dropping the deny entry of %s: %w", id, err)
		}
		if forgot {
			c.log.Warn("resync dropped a deny entry the cluster forgot", "id", id.String())
		}
	}

	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.saved.Done == nil {
		rs.saved.Done = map[string]expiredAt{}
	}
	for key, e := range by {
		if cur, ok := rs.saved.By[key]; ok && cur.Horizon <= e.Horizon {
			delete(rs.saved.By, key)
			if unlisted[key] {
				continue // not resynced against: not Done, nobody told
			}
			rs.saved.Done[key] = e
			rs.notify[key] = true
		}
	}
	if err := c.saveResyncLocked(); err != nil {
		return fmt.Errorf("persisting the end of the resync: %w", err)
	}
	rs.lastErr = ""
	if len(rs.saved.By) > 0 {
		rs.state = ResyncNeeded // another peer spoke up meanwhile
	} else {
		rs.state = ResyncInSync
		c.log.Info("resync finished; replication resumes", "dropped", len(candidates), "deny_dropped", len(denyCandidates))
	}
	rs.since = time.Now()
	rs.changedLocked()
	return nil
}

// tellResynced tells each peer whose expiry this node resynced against
// that it did, so that the peer lifts its mark.
func (c *Cluster) tellResynced(ctx context.Context) {
	rs := &c.resync
	rs.mu.Lock()
	todo := map[string]expiredAt{}
	for key := range rs.notify {
		todo[key] = rs.saved.Done[key]
	}
	rs.mu.Unlock()
	m := c.mem.Load()
	for key, e := range todo {
		r := m.byIdentity(key)
		ok := r == nil // not listed any more: nobody to tell
		if r != nil {
			err := r.node.Resynced(ctx, e.Horizon)
			ok = err == nil
			if err != nil && ctx.Err() == nil {
				c.log.Info("telling a peer this node resynced failed; retrying", "peer", r.URL, "err", err)
			}
		}
		if ok {
			rs.mu.Lock()
			delete(rs.notify, key)
			rs.mu.Unlock()
		}
	}
}

// orphansAgainst adds to out every live local state r has no record of
// and that r may have had and forgot: this node's own uploads, and the
// others older than horizon (keepUnlessForgotten keeps those r does not
// say it deleted). It compares
// range digests first, so ranges in agreement cost nothing. It returns
// the nodes r marked expired (their word does not count against r's).
func (c *Cluster) orphansAgainst(ctx context.Context, r *remote, horizon dtfc.Timestamp, out map[dtfc.ID]dtfc.State) ([]string, error) {
	ans, err := r.node.Digests(ctx, nil)
	if err != nil {
		return nil, err
	}
	theirs, err := ans.decode()
	if err != nil {
		return nil, err
	}
	ours, err := c.resyncStore().Digests()
	if err != nil {
		return nil, err
	}
	for b := range 256 {
		if ours[b] == theirs[b] || ours[b].Count == 0 {
			continue
		}
		if err := c.orphansInRange(ctx, r, []byte{byte(b)}, horizon, out); err != nil {
			return nil, err
		}
	}
	return ans.Expired, nil
}

func (c *Cluster) orphansInRange(ctx context.Context, r *remote, prefix []byte, horizon dtfc.Timestamp, out map[dtfc.ID]dtfc.State) error {
	me := c.resyncStore().NodeID()
	local := map[dtfc.ID]dtfc.State{}
	if err := c.resyncStore().States(prefix, func(st dtfc.State) error {
		if st.Deleted {
			return nil
		}
		// Its own uploads are all suspect (r may have had them, from
		// this node or another way), the rest when older than what r
		// forgot; keepUnlessForgotten keeps what r does not say it
		// deleted.
		if st.Node == me || st.Clock < horizon {
			local[st.ID] = st
		}
		return nil
	}); err != nil {
		return err
	}
	if len(local) == 0 {
		return nil
	}
	err := r.node.States(ctx, prefix, func(st dtfc.State) error {
		delete(local, st.ID)
		return nil
	})
	if err != nil {
		return err
	}
	for id, st := range local {
		out[id] = st
	}
	return nil
}

// keepUnlessForgotten keeps every candidate that no peer which expired
// this node says it deleted: a peer lacking a state is not enough (it may
// never have had it: down, cut off, its metadata rebuilt). A candidate is
// dropped only if such a peer answers that it forgot a delete of the ID
// newer than the local state (404 with HeaderForgotten); a peer that
// cannot be asked keeps the attempt from ending. The candidates are
// asked about resyncAsks at a time: a node that took uploads all through
// a long partition has one candidate for each, and a round trip each in
// turn would keep it out of replication for as many round trips.
func (c *Cluster) keepUnlessForgotten(ctx context.Context, m *membership, by map[string]expiredAt, candidates map[dtfc.ID]dtfc.State) error {
	var peers []*remote
	for key := range by {
		if r := m.byIdentity(key); r != nil {
			peers = append(peers, r)
		}
	}
	// Only what a peer says it deleted is dropped: a candidate goes into
	// deleted on that word alone, and every other one leaves candidates,
	// asked or not.
	var (
		mu      sync.Mutex
		deleted = map[dtfc.ID]bool{}
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(resyncAsks)
	var stopped error
	for id, st := range candidates {
		if err := gctx.Err(); err != nil {
			// A question failed, or ctx ended: the attempt fails (and
			// runs again), rather than end with candidates not asked
			// about, which would be kept for good.
			stopped = err
			break
		}
		g.Go(func() error {
			gone, err := forgotDelete(gctx, peers, id, st)
			if gone {
				mu.Lock()
				deleted[id] = true
				mu.Unlock()
			}
			return err
		})
	}
	err := g.Wait()
	for id := range candidates {
		if !deleted[id] {
			delete(candidates, id)
		}
	}
	return cmp.Or(err, stopped)
}

// resyncAsks is how many candidates keepUnlessForgotten asks about at
// once.
const resyncAsks = 8

// forgotDelete reports whether one of peers says it forgot a delete of
// id newer than st.
func forgotDelete(ctx context.Context, peers []*remote, id dtfc.ID, st dtfc.State) (bool, error) {
	deleted := false
	for _, r := range peers {
		ns, err := r.node.Stat(ctx, id)
		switch {
		case errors.Is(err, errPeerNotFound), errors.Is(err, errPeerResyncing):
			// No word of a delete (a peer resyncing answers only
			// for the deletes it forgot).
			continue
		case err != nil:
			return false, fmt.Errorf("asking %s about %s: %w", r.URL, id, err)
		case ns.Forgotten && ns.State.Deleted && ns.State.Newer(st):
			deleted = true
		}
	}
	return deleted, nil
}

// denyOrphansAgainst adds to out the local deny entries older than
// horizon that r, which expired this node, lifted and forgot: r has no
// entry for the ID and says it forgot a lift of it no older than ours. A
// block r merely lacks stays (r may never have had it: down, cut off,
// its metadata rebuilt); lifting a block by mistake would let its bytes
// be served again.
func (c *Cluster) denyOrphansAgainst(ctx context.Context, r *remote, horizon dtfc.Timestamp, out map[dtfc.ID]blobstore.Deny) error {
	theirs, err := r.node.DenyList(ctx)
	if err != nil {
		return err
	}
	known := map[dtfc.ID]bool{}
	for _, d := range theirs.Entries {
		known[d.ID] = true
	}
	lifted := map[dtfc.ID]blobstore.Deny{}
	for _, d := range theirs.ForgottenLifts {
		lifted[d.ID] = d
	}
	ours, err := c.resyncStore().DenyList()
	if err != nil {
		return err
	}
	for _, d := range ours {
		f, ok := lifted[d.ID]
		if !known[d.ID] && d.Clock < horizon && ok && !d.Newer(f) {
			out[d.ID] = d
		}
	}
	return nil
}

// keepHeldElsewhere removes from candidates what a healthy replica peer
// still holds live — one not resyncing, not marked expired here, nor by a
// peer this node resyncs against (distrust): every delete such a peer
// forgot, it had first, so a live state there is no orphan.
func (c *Cluster) keepHeldElsewhere(ctx context.Context, candidates map[dtfc.ID]dtfc.State, distrust map[string]bool) error {
	if len(candidates) == 0 {
		return nil
	}
	ids := make([]dtfc.ID, 0, len(candidates))
	for id := range candidates {
		ids = append(ids, id)
	}
	for _, r := range c.mem.Load().remotes {
		if r.Self() || r.IsCache() || c.distrusts(r) || distrust[r.identity()] {
			continue
		}
		if d, err := r.node.Digests(ctx, nil); err != nil || d.Resyncing {
			continue // cannot vouch for anything
		}
		for start := 0; start < len(ids); start += lookupBatch {
			end := min(start+lookupBatch, len(ids))
			states, err := r.node.Lookup(ctx, ids[start:end])
			if err != nil {
				if errors.Is(err, context.Canceled) {
					return err
				}
				break
			}
			for _, st := range states {
				if !st.Deleted {
					delete(candidates, st.ID)
				}
			}
		}
	}
	return nil
}
