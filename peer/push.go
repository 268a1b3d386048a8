package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/sleep"
)

const (
	pushBatch       = 256 // changes offered per request
	pushParallelism = 16  // blob bodies sent at once to one peer
	// batchParallelism is how many batches of small blobs (sendBlobs)
	// are sent at once to one peer, each of at least minBatch blobs when
	// there are that many: the peer's work on one (creating and linking
	// files, which costs CPU) then overlaps its syncs of another.
	batchParallelism = 4
	minBatch         = 32
)

// pushTarget takes what a pusher sends.
type pushTarget interface {
	// Offer offers states and deny entries and returns the peer's
	// result for each (resultOK, resultNeed, ...).
	Offer(ctx context.Context, req changesRequest) (changesAnswer, error)
	// Put sends the size bytes of body, the blob of st.
	Put(ctx context.Context, st dtfc.State, body io.Reader, size int64) error
}

// batchTarget is a pushTarget that also takes many small blobs in one
// request, their syncs shared (*httpNode does; a peer may refuse it).
type batchTarget interface {
	// PutBatch sends the blobs (each of at most maxBatchBlobSize bytes)
	// and returns the peer's result for each; errBatchUnsupported if the
	// peer does not know batches.
	PutBatch(ctx context.Context, blobs []batchBlob) ([]batchResult, error)
}

// feedStore is what a pusher needs of the blob store: the change feed,
// the blobs it sends, and where it keeps the peer's cursor.
type feedStore interface {
	Changes(since uint64, limit int) ([]blobstore.Change, error)
	Changed() <-chan struct{}
	CountChanges(since uint64, deletesOnly bool) (int64, error)
	OpenQuietly(id dtfc.ID) (*blobstore.Blob, error)
	Stat(id dtfc.ID) (dtfc.State, error)
	Evicted(id dtfc.ID) bool
	Cold(id dtfc.ID) error
	Value(key string) ([]byte, error)
	SetValue(key string, v []byte) error
}

func (c *Cluster) feedStore() feedStore { return c.store }

// pusher sends the local change feed to one peer: every change after the
// peer's acknowledged cursor, uploads with their bytes if the peer wants
// them, deletes as tombstones, blocks and lifts (a cache gets no
// uploads). The cursor is persisted after the peer accepted a prefix of a
// batch, so a crash may resend a change but never skips one; a change the
// peer refuses (its clock too far ahead of the peer's) holds the cursor
// until it is accepted.
type pusher struct {
	c      *Cluster
	store  feedStore
	r      *remote
	cancel context.CancelFunc
	cursor atomic.Uint64
	// skipped is the cursor before the first upload the pusher passed
	// without sending (the peer was a cache) since the peer last counted
	// as a replica, persisted before the cursor passed it; noSkip if
	// none. A cache promoted to a replica never got those uploads, so
	// it has acknowledged only up to here (ackedOf), and its pusher
	// goes back here (rewind). Without it, a cache counted the promoted
	// node's cursor as a replica's, evicted the uploads it took, and
	// they were lost (TestCacheKeepsUploadsSkippedForAPromotedCache).
	skipped atomic.Uint64
	// node is the identity of the node the cursor counts for ("" until
	// one answered): another node answering at the URL (one that lost
	// its disk and joined again, as README's runbook has it) has accepted
	// nothing, and its cursor goes back to the start (renew). Kept by
	// URL alone, the cursor counted for the new node: a leave was taken
	// with an upload the new node never got (TestLeaveAfterReplacementAtSameURL).
	node   atomic.Pointer[string]
	loaded atomic.Bool
	// curMu is held across every change of cursor and skipped, and by
	// cursorOf across its reads of both: read apart, a rewind between
	// them gave the old cursor without its floor.
	curMu sync.Mutex
	// done is closed when run returns; after, if set, is the done of the
	// pusher this one replaces, which run waits for before it reads the
	// cursor.
	done  chan struct{}
	after <-chan struct{}
	// caughtUp is when the pusher last found nothing to send (for the
	// lag); ackedAt the same, persisted at most every ackedAtPersist and
	// kept across restarts (for expiry).
	caughtUp   atomic.Pointer[time.Time]
	ackedAt    atomic.Pointer[time.Time]
	ackedSaved time.Time // when ackedAt was last persisted (run's goroutine only)
	// next is the cursor as run knows it, failures the pushes failed in
	// a row, inflight the round on its way (run's goroutine only).
	next     uint64
	failures int
	inflight *round
	// state is what run is doing, for /_status (pushers.state); lastErr
	// why its last push failed, while it backs off (nil once one
	// succeeds).
	state   atomic.Pointer[string]
	lastErr atomic.Pointer[string]
}

// The states of a pusher (api.PeerStatus.Pusher).
var (
	pushIdle    = "idle"
	pushPushing = "pushing"
	pushBackoff = "backoff"
	pushHeld    = "held"
	pushPaused  = "paused"
)

// round is a batch of changes on its way to the peer (push, run by
// start).
type round struct {
	since   uint64 // the cursor the changes were read after
	changes []blobstore.Change
	done    chan struct{} // closed when push returned, with:
	upTo    uint64
	skipped bool // an upload up to upTo was passed without being sent
	err     error
}

// noSkip: no upload skipped (pusher.skipped).
const noSkip = math.MaxUint64

// newPusher returns r's pusher; cancel stops its run.
func newPusher(c *Cluster, r *remote, cancel context.CancelFunc) *pusher {
	return &pusher{c: c, store: c.store, r: r, cancel: cancel, done: make(chan struct{})}
}

// storedCursor reads a peer's persisted cursor.
func (c *Cluster) storedCursor(url string) uint64 {
	v, err := c.feedStore().Value(cursorKey(url))
	if err != nil || v == nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(v), 10, 64)
	return n
}

// storedCursorNode returns the identity of the node the stored cursor of
// url counts for ("" if none was recorded).
func (c *Cluster) storedCursorNode(url string) string {
	v, err := c.feedStore().Value(keyCursorNode + url)
	if err != nil {
		return ""
	}
	return string(v)
}

// removedMember reports whether node is a member removed from the
// cluster.
func (c *Cluster) removedMember(node string) bool {
	m, ok := c.members.get(node)
	return node != "" && ok && m.Removed
}

// noSkipValue is the stored value of noSkip. A store written before
// skipped was kept has no value at all (storedSkipped's known false).
const noSkipValue = "-"

// storedSkipped reads a peer's persisted pusher.skipped; known is false
// when the store has none (written by a dtfc that did not keep it).
func (c *Cluster) storedSkipped(url string) (floor uint64, known bool) {
	v, err := c.feedStore().Value(keySkippedPrefix + url)
	if err != nil {
		return 0, true // unreadable: as if nothing was ever sent
	}
	if len(v) == 0 {
		return 0, false
	}
	if string(v) == noSkipValue {
		return noSkip, true
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, true
	}
	return n, true
}

// cursorOf returns the sequence number up to which the peer has accepted
// the feed: its cursor, but for a peer that is not a cache (now) no
// further than the first upload skipped while it was one.
func (c *Cluster) cursorOf(url string) uint64 {
	if p := c.pushers.get(url); p != nil && p.loaded.Load() {
		if p.otherNode() {
			return 0 // not renewed yet: it has accepted nothing
		}
		if n := p.node.Load(); n != nil && c.removedMember(*n) {
			return 0 // what a removed member accepted reaches nobody
		}
		p.curMu.Lock()
		cur, floor := p.cursor.Load(), p.skipped.Load()
		p.curMu.Unlock()
		// The floor counts unless the peer is a cache both for this
		// pusher and in the list in force (a pusher not yet replaced
		// still has the remote of the peer's old role).
		if !p.r.IsCache() || !c.listedAsCache(url) {
			cur = min(cur, floor)
		}
		return cur
	}
	if c.removedMember(c.storedCursorNode(url)) {
		return 0
	}
	// No pusher running: the role is not known here, so the lesser (a
	// store without skipped kept: none sent, as far as it can tell).
	floor, known := c.storedSkipped(url)
	if !known && c.listedAsArchive(url) {
		floor = noSkip // as pusher.load will set it
	}
	return min(c.storedCursor(url), floor)
}

// listedAsArchive reports whether the remote in force at url is an
// archive (never a cache: no floor of skipped uploads).
func (c *Cluster) listedAsArchive(url string) bool {
	r := c.mem.Load().byURL[url]
	return r != nil && r.IsArchive()
}

// listedAsCache reports whether the remote in force at url is a cache.
func (c *Cluster) listedAsCache(url string) bool {
	r := c.mem.Load().byURL[url]
	return r != nil && r.IsCache()
}

// queue counts the operations the peer has not accepted yet, and how long
// the pusher has been behind (since it last had nothing to send).
func (c *Cluster) queue(r *remote) (int64, time.Duration) {
	if r.Self() {
		return 0, 0
	}
	n, err := c.feedStore().CountChanges(c.cursorOf(r.URL), r.IsCache())
	if err != nil || n == 0 {
		return n, 0
	}
	p := c.pushers.get(r.URL)
	if p == nil {
		return n, 0
	}
	if t := p.caughtUp.Load(); t != nil {
		return n, time.Since(*t)
	}
	return n, 0
}

// wakePushers makes every pusher look again at once (a peer's identity or
// role became known, a resync ended).
func (c *Cluster) wakePushers() {
	for _, r := range c.mem.Load().remotes {
		r.wake()
	}
}

// run pushes the feed to the peer until ctx ends: a driver over step,
// which does one thing and says how to wait before the next.
func (p *pusher) run(ctx context.Context) {
	defer close(p.done)
	if p.after != nil {
		select {
		case <-p.after:
		case <-ctx.Done():
			return
		}
	}
	p.load()
	defer p.drain() // a round may be on its way: none outlives Run
	for ctx.Err() == nil {
		if wait := p.step(ctx); wait != nil && !wait(ctx) {
			return
		}
	}
}

// wait is how a pusher waits before its next step; false means ctx
// ended. A nil wait goes on at once.
type wait func(ctx context.Context) bool

// load reads the peer's cursor and when it was last caught up.
func (p *pusher) load() {
	p.next = p.c.storedCursor(p.r.URL)
	floor, known := p.c.storedSkipped(p.r.URL)
	if !known {
		// Written by a dtfc that kept no floor: to a peer that was a
		// cache then (whatever it is now: the upgrade may come with its
		// promotion) it may have passed uploads without a trace. The
		// floor is the start: a peer that is a replica is offered the
		// feed again once, and answers "have it" for what it holds
		// (TestCacheKeepsUploadsSkippedBeforeUpgrade). An archive is
		// never a cache: it was passed nothing (TestArchiveDenyListWritten).
		floor = noSkip
		if p.next > 0 && !p.r.IsArchive() {
			floor = 0
		}
		v := noSkipValue
		if floor != noSkip {
			v = strconv.FormatUint(floor, 10)
		}
		if err := p.store.SetValue(keySkippedPrefix+p.r.URL, []byte(v)); err != nil {
			p.c.log.Error("persisting a replication cursor", "peer", p.r.URL, "err", err)
			floor = min(floor, p.next) // kept in memory; written with the next change
		}
	}
	p.skipped.Store(floor)
	if v, err := p.store.Value(keyCursorNode + p.r.URL); err == nil {
		node := string(v)
		p.node.Store(&node)
	}
	p.cursor.Store(p.next)
	start := time.Now()
	p.caughtUp.Store(&start)
	if t := p.c.storedAckedAt(p.r.URL); !t.IsZero() {
		p.ackedAt.Store(&t)
		p.ackedSaved = t
	}
	p.loaded.Store(true)
}

// step waits while the peer must not be pushed to, waits for the feed
// when the peer has all of it, and pushes the next batch otherwise.
func (p *pusher) step(ctx context.Context) wait {
	c, r := p.c, p.r
	if p.inflight != nil {
		return p.await(ctx)
	}
	if r.Self() || c.resync.holds() {
		// Itself: nothing to send. While a resync is pending, no one:
		// a peer that marked this node expired refuses everything until
		// the resync against it is done, and any other may be a node
		// that never had the deletes this node missed (one that joined
		// after they were forgotten) and would take the files and hand
		// them on to the nodes that forgot them
		// (e2e/TestExpiredNodeMeetsANewNode).
		p.state.Store(&pushHeld)
		return either(c.resync.changed(), r.kick)
	}
	if !p.renew() {
		p.state.Store(&pushPaused)
		return pause(time.Second)
	}
	if p.skipped.Load() != noSkip && !r.IsCache() {
		if !p.rewind() {
			p.state.Store(&pushPaused)
			return pause(time.Second)
		}
	}
	changed := p.store.Changed()
	if p.failures > 0 {
		// A retry starts: the peer's answers to it must not wake the
		// pusher for another one at once.
		r.pushFailed()
	}
	changes, err := p.store.Changes(p.next, pushBatch)
	if err != nil {
		c.log.Error("reading the change feed", "err", err)
		p.state.Store(&pushPaused)
		return pause(time.Second)
	}
	if len(changes) == 0 {
		p.caughtUpNow()
		p.state.Store(&pushIdle)
		return either(changed, c.resync.changed())
	}
	p.state.Store(&pushPushing)
	p.inflight = p.start(ctx, p.next, changes)
	return p.await(ctx)
}

// start pushes changes, read after the cursor since, in a goroutine of
// its own.
func (p *pusher) start(ctx context.Context, since uint64, changes []blobstore.Change) *round {
	rd := &round{since: since, changes: changes, done: make(chan struct{})}
	go func() {
		defer close(rd.done)
		rd.upTo, rd.skipped, rd.err = p.push(ctx, changes)
	}()
	return rd
}

// await waits for the round in flight and moves the cursor as far as
// the peer accepted it. A full round that is going well has the next
// one start meanwhile (read after its last change, so the two never
// overlap): while the peer commits one, the next is offered and its
// bytes sent, and a peer far behind never waits for this node between
// rounds. The cursor still moves in order, and only past what the peer
// accepted: past the next round only once this one was accepted whole;
// a round after one that failed is waited for and dropped (its changes
// are offered again, and the peer answers "ok" for what it took).
func (p *pusher) await(ctx context.Context) wait {
	c, r := p.c, p.r
	cur := p.inflight
	p.inflight = nil
	last := cur.changes[len(cur.changes)-1].Seq
	if len(cur.changes) == pushBatch && p.failures == 0 {
		if next, err := p.store.Changes(last, pushBatch); err == nil && len(next) > 0 {
			p.inflight = p.start(ctx, last, next)
		}
	}
	<-cur.done
	if cur.since != p.next {
		// After a round that was not accepted whole: offered again.
		p.drain()
		return nil
	}
	p.curMu.Lock()
	if cur.skipped && p.skipped.Load() == noSkip {
		// Persisted before the cursor passes the uploads skipped.
		if err := p.store.SetValue(keySkippedPrefix+r.URL, []byte(strconv.FormatUint(cur.since, 10))); err != nil {
			p.curMu.Unlock()
			c.log.Error("persisting a replication cursor", "peer", r.URL, "err", err)
			p.drain()
			p.state.Store(&pushPaused)
			return pause(time.Second)
		}
		p.skipped.Store(cur.since)
	}
	advanced := cur.upTo <= p.next || p.advance(cur.upTo)
	p.curMu.Unlock()
	if !advanced {
		p.drain()
		p.state.Store(&pushPaused)
		return pause(time.Second)
	}
	if cur.err != nil || cur.upTo != last {
		p.drain()
	}
	if cur.err != nil {
		return p.failed(ctx, cur.err)
	}
	if p.failures > 0 {
		c.log.Info("peer accepts pushes again", "peer", r.URL)
		r.pushOK()
	}
	p.failures = 0
	p.lastErr.Store(nil)
	return nil
}

// otherNode reports whether the node answering at the URL now is not the
// one the cursor counts for (never while the URL reaches several nodes
// by turns: a load balancer, warned of, whose flips would start the
// cursor over and over).
func (p *pusher) otherNode() bool {
	held, now := p.node.Load(), p.r.NodeID()
	return held != nil && *held != "" && now != "" && *held != now && !p.r.sharedLately()
}

// renew records the identity of the node the cursor counts for the first
// time one answers, and starts the cursor over when another node answers
// at the URL; false if that could not be persisted.
func (p *pusher) renew() bool {
	now := p.r.NodeID()
	if now == "" {
		return true
	}
	held := p.node.Load()
	if held != nil && *held == now {
		return true
	}
	if p.otherNode() {
		p.curMu.Lock()
		defer p.curMu.Unlock()
		for _, kv := range [][2]string{{cursorKey(p.r.URL), "0"}, {keySkippedPrefix + p.r.URL, noSkipValue}} {
			if err := p.store.SetValue(kv[0], []byte(kv[1])); err != nil {
				p.c.log.Error("persisting a replication cursor", "peer", p.r.URL, "err", err)
				return false
			}
		}
		p.c.log.Warn("another node answers at a peer's URL: its cursor starts over, and what the node before it accepted is sent to it", "peer", p.r.URL, "was", *held, "now", now)
		p.next = 0
		p.cursor.Store(0)
		p.skipped.Store(noSkip)
	} else if held != nil && *held != "" {
		return true // shared by turns: kept as it is
	}
	if err := p.store.SetValue(keyCursorNode+p.r.URL, []byte(now)); err != nil {
		p.c.log.Error("persisting a replication cursor", "peer", p.r.URL, "err", err)
		return false
	}
	p.node.Store(&now)
	return true
}

// rewind moves the cursor of a peer that was a cache and now is not back
// to before the first upload skipped for it, so that it is sent them;
// false if that could not be persisted. The cursor is written first: a
// crash between the two writes leaves both at the same place.
func (p *pusher) rewind() bool {
	p.curMu.Lock()
	defer p.curMu.Unlock()
	to := min(p.next, p.skipped.Load())
	if err := p.store.SetValue(cursorKey(p.r.URL), []byte(strconv.FormatUint(to, 10))); err != nil {
		p.c.log.Error("persisting a replication cursor", "peer", p.r.URL, "err", err)
		return false
	}
	p.next = to
	p.cursor.Store(to)
	if err := p.store.SetValue(keySkippedPrefix+p.r.URL, []byte(noSkipValue)); err != nil {
		p.c.log.Error("persisting a replication cursor", "peer", p.r.URL, "err", err)
		return false
	}
	p.skipped.Store(noSkip)
	p.c.log.Info("a peer that was a cache is not one now: the uploads passed while it was are sent to it", "peer", p.r.URL, "from", to)
	return true
}

// drain waits for the round in flight, if any, and drops its result.
func (p *pusher) drain() {
	if p.inflight != nil {
		<-p.inflight.done
		p.inflight = nil
	}
}

// advance persists the cursor at upTo (the peer accepted everything up
// to it); false if it could not.
func (p *pusher) advance(upTo uint64) bool {
	if err := p.store.SetValue(cursorKey(p.r.URL), []byte(strconv.FormatUint(upTo, 10))); err != nil {
		p.c.log.Error("persisting a replication cursor", "peer", p.r.URL, "err", err)
		return false
	}
	p.next = upTo
	p.cursor.Store(upTo)
	p.c.acked()
	return true
}

// failed counts a failed push and returns the backoff before the next.
func (p *pusher) failed(ctx context.Context, err error) wait {
	if ctx.Err() != nil {
		return nil // run ends
	}
	p.failures++
	p.r.pushFailed()
	p.state.Store(&pushBackoff)
	msg := err.Error()
	p.lastErr.Store(&msg)
	failures := p.failures
	switch {
	case errors.Is(err, errExpired):
		// The answer told the resync; it holds this pusher next.
		p.c.log.Debug("push refused: this node is expired at the peer", "peer", p.r.URL)
	case failures == 1:
		p.c.log.Warn("push to peer failed; retrying with backoff", "peer", p.r.URL, "err", err)
	default:
		p.c.log.Debug("push to peer failed", "peer", p.r.URL, "err", err, "retry_in", backoff(failures))
	}
	return func(ctx context.Context) bool { return p.backoff(ctx, failures) }
}

// either waits for a or b.
func either(a, b <-chan struct{}) wait {
	return func(ctx context.Context) bool {
		select {
		case <-a:
		case <-b:
		case <-ctx.Done():
			return false
		}
		return true
	}
}

// pause waits d.
func pause(d time.Duration) wait {
	return func(ctx context.Context) bool { return sleep.For(ctx, d) == nil }
}

// caughtUpNow records that the peer has accepted the whole feed.
func (p *pusher) caughtUpNow() {
	now := time.Now()
	p.caughtUp.Store(&now)
	p.ackedAt.Store(&now)
	if now.Sub(p.ackedSaved) < ackedAtPersist {
		return
	}
	if err := p.store.SetValue(keyAckedAtPrefix+p.r.URL, []byte(strconv.FormatInt(now.UnixMilli(), 10))); err != nil {
		p.c.log.Warn("persisting when a peer was last caught up", "peer", p.r.URL, "err", err)
		return
	}
	p.ackedSaved = now
}

// backoff waits before the next attempt (or until the peer shows signs of
// life, or this node's resync moves on: a push refused because this node
// was expired is retried as soon as the resync is done); false means ctx
// ended.
func (p *pusher) backoff(ctx context.Context, failures int) bool {
	t := time.NewTimer(backoff(failures))
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.r.kick:
	case <-p.c.resync.changed():
	case <-ctx.Done():
		return false
	}
	return true
}

// errClockRefused: the peer refused changes whose clock is too far ahead
// of its wall clock.
var errClockRefused = errors.New("refused: clock too far ahead of the peer's")

// push offers changes to the peer, sends the bytes it asks for, and
// returns the sequence number up to which the peer accepted every change
// (the cursor may move that far) with the first failure, if any.
func (p *pusher) push(ctx context.Context, changes []blobstore.Change) (upTo uint64, skipped bool, err error) {
	req, where := p.offer(changes)
	accepted := make([]bool, len(changes))
	for i, w := range where {
		// Not offered (an upload to a cache): passed, even when nothing
		// else in the batch is offered.
		accepted[i] = w == skip
	}
	// notKept: uploads the peer answered it does not keep, as a cache
	// (listed as a replica, or its role not known yet): passed like a
	// skipped one, and counted so (pusher.skipped). Counted as accepted,
	// they let a cache whose peer was promoted evict its uploads
	// (TestCacheKeepsUploadsAnsweredCacheByAPeerListedAsReplica).
	notKept := make([]bool, len(changes))
	var firstErr error
	if len(req.Changes)+len(req.Deny) > 0 {
		ans, err := p.r.node.Offer(ctx, req)
		if err != nil {
			return 0, false, err
		}
		if len(ans.Results) != len(req.Changes) || len(ans.DenyResults) != len(req.Deny) {
			return 0, false, fmt.Errorf("peer %s answered %d+%d results for %d+%d changes", p.r.URL, len(ans.Results), len(ans.DenyResults), len(req.Changes), len(req.Deny))
		}
		for i, w := range where {
			notKept[i] = w >= 0 && ans.Results[w] == resultCache
		}
		firstErr = p.settle(ctx, changes, where, ans, accepted)
		p.applyBlocked(req, ans.Blocked)
	}
	for i, ok := range accepted {
		if !ok {
			break
		}
		upTo = changes[i].Seq
		skipped = skipped || where[i] == skip || notKept[i]
	}
	return upTo, skipped, firstErr
}

// applyBlocked applies the blocks a peer answered for the uploads it
// ignored (changesAnswer.Blocked), before the cursor passes them; only
// those of IDs offered to it.
func (p *pusher) applyBlocked(req changesRequest, blocked []blobstore.Deny) {
	offered := func(d blobstore.Deny) bool {
		return slices.ContainsFunc(req.Changes, func(st dtfc.State) bool { return st.ID == d.ID && !st.Deleted })
	}
	blocked = slices.DeleteFunc(slices.Clone(blocked), func(d blobstore.Deny) bool { return !d.Active() || !offered(d) })
	if _, err := p.c.applyDenyList(blocked); err != nil {
		p.c.log.Warn("a peer's blocks of the uploads it ignored could not be applied", "peer", p.r.URL, "err", err)
	}
}

// skip marks a change not offered (an upload not sent to a cache).
const skip = math.MinInt

// offer builds the request offering changes; where[i] is change i's
// index in req.Changes (>= 0), in req.Deny (-1-j), or skip.
func (p *pusher) offer(changes []blobstore.Change) (changesRequest, []int) {
	var req changesRequest
	where := make([]int, len(changes))
	cache := p.r.IsCache()
	for i, ch := range changes {
		switch {
		case ch.Deny != nil:
			where[i] = -1 - len(req.Deny)
			req.Deny = append(req.Deny, *ch.Deny)
		case cache && !ch.State.Deleted:
			where[i] = skip
		default:
			where[i] = len(req.Changes)
			req.Changes = append(req.Changes, bounded(ch.State))
		}
	}
	return req, where
}

// settle acts on the peer's answer: marks in accepted the changes it
// took, sends the bytes it asked for, and counts what it refused. It
// returns the first failure. Small blobs go in batches (sendBlobs) if
// the peer takes them, larger ones one by one.
func (p *pusher) settle(ctx context.Context, changes []blobstore.Change, where []int, ans changesAnswer, accepted []bool) error {
	c, r := p.c, p.r
	var firstErr error
	var refused int
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pushParallelism)
	bt, batching := r.node.(batchTarget)
	batching = batching && r.batches()
	var small, large []int // the changes whose bytes the peer needs
	for i, w := range where {
		var res string
		switch {
		case w == skip:
			accepted[i] = true
			continue
		case w < 0:
			res = ans.DenyResults[-1-w]
		default:
			res = ans.Results[w]
		}
		switch res {
		case resultOK, resultCache:
			accepted[i] = true
			if changes[i].Deny == nil {
				c.metrics.pushed.WithLabelValues(kindOf(changes[i].State)).Inc()
			}
		case resultNeed:
			if batching && changes[i].State.Size <= maxBatchBlobSize {
				small = append(small, i)
			} else {
				large = append(large, i)
			}
		case resultAhead:
			refused++
		default:
			if firstErr == nil {
				firstErr = fmt.Errorf("peer %s: unknown result %q", r.URL, res)
			}
		}
	}
	if len(small) > 0 {
		g.Go(func() error {
			sts := make([]dtfc.State, len(small))
			for k, i := range small {
				sts[k] = changes[i].State
			}
			ok, err := c.sendBlobs(gctx, r, bt, sts)
			mu.Lock()
			for k, i := range small {
				accepted[i] = ok[k]
			}
			mu.Unlock()
			return err
		})
	}
	for _, i := range large {
		st := changes[i].State
		g.Go(func() error {
			err := c.sendBlob(gctx, r, st)
			mu.Lock()
			accepted[i] = err == nil
			mu.Unlock()
			return err
		})
	}
	// Every send started is waited for, whatever failed: none may
	// outlive Run and the store's Close.
	if err := g.Wait(); err != nil && firstErr == nil {
		firstErr = err
	}
	if refused > 0 {
		r.clockRefusals(refused)
		c.metrics.clockRefused.WithLabelValues(r.URL).Add(float64(refused))
		err := fmt.Errorf("peer %s: %d change(s) %w; check the clocks (max_clock_offset)", r.URL, refused, errClockRefused)
		if firstErr == nil {
			firstErr = err
		}
		c.log.Warn("a peer refused changes whose clock is too far ahead of its own", "peer", r.URL, "count", refused)
	}
	return firstErr
}

func kindOf(st dtfc.State) string {
	if st.Deleted {
		return "delete"
	}
	return "upload"
}

// sendBlob sends a blob's bytes with its state. If the blob is gone
// meanwhile, nothing is sent (see openToSend).
func (c *Cluster) sendBlob(ctx context.Context, r *remote, st dtfc.State) error {
	b, err := c.openToSend(ctx, st)
	if b == nil || err != nil {
		return err
	}
	defer b.Close()
	return c.putOne(ctx, r, b)
}

// openToSend opens the blob of st to send its bytes. It returns nil and
// no error when there is nothing to send, and the offer counts as done:
// the blob is gone meanwhile (its newer state is later in the feed), or
// its record is still there but its file is lost (it is fetched back
// from a peer, and the peer gets the state again with the repair's feed
// entry). A tier's evicted blob is read back first (from the peers or
// the archive): a tier evicts what its archives accepted, before a peer
// that is down, new, or whose cursor went back has it. Sending is no
// read: the blob keeps its place in a cache's or tier's eviction order.
func (c *Cluster) openToSend(ctx context.Context, st dtfc.State) (*blobstore.Blob, error) {
	b, err := c.feedStore().OpenQuietly(st.ID)
	if !errors.Is(err, blobstore.ErrNotFound) {
		return b, err
	}
	cur, serr := c.feedStore().Stat(st.ID)
	if serr != nil || cur.Deleted {
		return nil, nil
	}
	if c.feedStore().Evicted(st.ID) {
		// OpenQuietly holds it until sent; between the read-back and
		// the open other read-backs may evict it again: then again, a
		// few times, and a failure (retried) rather than a send skipped.
		for range 3 {
			if err := c.readBack(ctx, st.ID); err != nil {
				return nil, fmt.Errorf("reading back evicted %s to send it: %w", st.ID, err)
			}
			b, err := c.feedStore().OpenQuietly(st.ID)
			// Not a read: first to go again once sent.
			if cerr := c.feedStore().Cold(st.ID); cerr != nil {
				c.log.Warn("could not mark a blob read back for a peer as the first to evict", "id", st.ID.String(), "err", cerr)
			}
			if !errors.Is(err, blobstore.ErrNotFound) {
				return b, err
			}
			if cur, serr := c.feedStore().Stat(st.ID); serr != nil || cur.Deleted {
				return nil, nil // deleted meanwhile
			}
		}
		return nil, fmt.Errorf("evicted %s was evicted again before it could be sent", st.ID)
	}
	c.log.Warn("a record's file is missing; fetching it again", "id", st.ID.String())
	c.goRepair(cur)
	return nil, nil
}

// readBack brings a tier's evicted blob back into the store, as a read
// would.
func (c *Cluster) readBack(ctx context.Context, id dtfc.ID) error {
	b, err := c.Open(ctx, id, OpenOptions{})
	if err != nil {
		return err
	}
	defer b.Close()
	return b.Wait(ctx)
}

// putOne sends an open blob's bytes with its state, alone. (A batch
// reads blobs through section readers: the file's offset is still 0.)
func (c *Cluster) putOne(ctx context.Context, r *remote, b *blobstore.Blob) error {
	if err := r.node.Put(ctx, b.State, b.File, b.State.Size); err != nil {
		return err
	}
	c.pushedBlob(b.State)
	return nil
}

func (c *Cluster) pushedBlob(st dtfc.State) {
	c.metrics.pushed.WithLabelValues("upload").Inc()
	c.metrics.pushedBytes.Add(float64(st.Size))
}

// sendBlobs sends small blobs' bytes with their states, in batches of at
// most maxBatchBlobs blobs and maxBatchBody bytes, several at once, and
// reports which ones the peer accepted (or that need no sending: see
// openToSend), with the first failure. The peer's answer to a batch
// comes once what it stored is durable there, so an accepted blob may
// move the cursor. A peer that does not know batches gets the blobs one
// by one, and no batch again (remote.refuseBatches).
func (c *Cluster) sendBlobs(ctx context.Context, r *remote, bt batchTarget, sts []dtfc.State) ([]bool, error) {
	accepted := make([]bool, len(sts))
	var firstErr error
	var mu sync.Mutex // guards accepted and firstErr
	done := func(k int, err error) {
		mu.Lock()
		defer mu.Unlock()
		accepted[k] = err == nil
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	var todo []openBlob
	defer func() {
		for _, o := range todo {
			o.b.Close()
		}
	}()
	var alone []openBlob
	for k, st := range sts {
		b, err := c.openToSend(ctx, st)
		switch {
		case b == nil:
			done(k, err)
		case b.State.Size > maxBatchBlobSize:
			// Larger than its offered state said (a record whose size
			// is wrong): alone, as a batch would be refused for it.
			alone = append(alone, openBlob{k, b})
		default:
			todo = append(todo, openBlob{k, b})
		}
	}
	var g errgroup.Group
	g.SetLimit(batchParallelism)
	for _, batch := range splitBatches(todo) {
		g.Go(func() error {
			c.sendBatch(ctx, r, bt, batch, done)
			return nil
		})
	}
	for _, o := range alone {
		g.Go(func() error {
			defer o.b.Close()
			done(o.k, c.putOne(ctx, r, o.b))
			return nil
		})
	}
	g.Wait()
	return accepted, firstErr
}

// openBlob is an open blob to send, change k of sendBlobs.
type openBlob struct {
	k int
	b *blobstore.Blob
}

// splitBatches splits the blobs into batches within the limits, of
// about equal sizes, into at least batchParallelism of them when there
// are enough blobs for batches of minBatch.
func splitBatches(todo []openBlob) [][]openBlob {
	per := min(maxBatchBlobs, max(minBatch, (len(todo)+batchParallelism-1)/batchParallelism))
	var batches [][]openBlob
	for len(todo) > 0 {
		n, size := 0, int64(0)
		for ; n < len(todo) && n < per; n++ {
			st := todo[n].b.State
			frame := int64(len(frameHead(st))) + st.Size
			if n > 0 && size+frame > maxBatchBody {
				break
			}
			size += frame
		}
		batches = append(batches, todo[:n])
		todo = todo[n:]
	}
	return batches
}

// sendBatch sends one batch (or, to a peer that does not know batches,
// its blobs one by one) and tells done how each blob went.
func (c *Cluster) sendBatch(ctx context.Context, r *remote, bt batchTarget, batch []openBlob, done func(k int, err error)) {
	blobs := make([]batchBlob, len(batch))
	for j, o := range batch {
		blobs[j] = batchBlob{State: o.b.State, Body: io.NewSectionReader(o.b.File, 0, o.b.State.Size)}
	}
	var results []batchResult
	err := errBatchUnsupported
	if r.batches() {
		results, err = bt.PutBatch(ctx, blobs)
	}
	if errors.Is(err, errBatchUnsupported) {
		if r.batches() {
			r.refuseBatches()
			c.log.Info("peer takes no batch of blobs (a dtfc from before them): sending blobs one by one", "peer", r.URL)
		}
		var g errgroup.Group
		g.SetLimit(pushParallelism)
		for _, o := range batch {
			g.Go(func() error {
				done(o.k, c.putOne(ctx, r, o.b))
				return nil
			})
		}
		g.Wait()
		return
	}
	for j, o := range batch {
		switch {
		case err != nil:
			done(o.k, err)
		case results[j].accepted():
			c.pushedBlob(o.b.State)
			done(o.k, nil)
		default:
			done(o.k, fmt.Errorf("peer %s: %s: %d %s", r.URL, o.b.State.ID, results[j].Status, results[j].Error))
		}
	}
}
