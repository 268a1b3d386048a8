package peer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/sleep"
)

// The relay: every ArchiveInterval this node reads, in each archive, the
// logs of the other nodes that write to it, from where it stopped (a
// durable cursor per archive and writer; a new node reads every log from
// its start), and applies each ID they name. It applies the ID's newest
// record in the bucket, never the log's word: an old upload's record can
// then never win over a tombstone's, as long as no record is deleted
// (none is). The state goes through the same Apply as a peer's (last
// writer wins, clocks too far ahead refused, tombstones of forgotten
// deletes kept dead) and an upload's bytes through the fetcher from the
// archive (verified before they are kept or served). A deny entry (a
// block or a lift) is applied the same way: the ID's newest deny record
// in the bucket, through the same ApplyDeny as a peer's. Two nodes whose
// only common peer is the bucket converge through it, their deny lists
// too.

// keyRelayPrefix + archive URL + " " + writer: how far this node has
// applied that writer's log in that archive.
const keyRelayPrefix = "archive relay "

// relayParallelism is how many IDs of one log entry are applied at once.
const relayParallelism = 8

// relayLoop relays from every archive at start and then every
// ArchiveInterval (with jitter), until ctx ends.
func (c *Cluster) relayLoop(ctx context.Context) {
	for {
		c.relayRound(ctx)
		d := time.Duration(float64(c.opts.ArchiveInterval) * (0.9 + 0.2*rand.Float64()))
		if sleep.For(ctx, d) != nil {
			return
		}
	}
}

// relayRound reads every archive once. It returns the number of log
// entries applied.
func (c *Cluster) relayRound(ctx context.Context) int {
	if c.resync.holds() {
		// Out of date with respect to some peer: nothing is taken in
		// until the resync ends.
		return 0
	}
	n := 0
	allRead := true
	for _, r := range c.mem.Load().remotes {
		an, ok := r.node.(*archiveNode)
		if !ok || ctx.Err() != nil {
			continue
		}
		before := an.tookCounts()
		c.retryParked(ctx, r, an)
		if err := c.writeDenyList(ctx, r, an); err != nil && ctx.Err() == nil {
			c.log.Info("writing the deny list to an archive failed; retried next round", "archive", r.URL, "err", err)
		}
		got, err := c.relayFrom(ctx, r, an)
		n += got
		if err != nil {
			allRead = false
			if ctx.Err() == nil {
				c.log.Info("relay from an archive failed; retried next round", "archive", r.URL, "err", err)
			}
		}
		if after := an.tookCounts(); after != before {
			c.log.Info("took from an archive what this node did not know", "archive", r.URL,
				"uploads", after[0]-before[0], "deletes", after[1]-before[1], "deny_entries", after[2]-before[2])
		}
	}
	if allRead && ctx.Err() == nil && c.hasArchive() && len(c.replicaPeers()) == 0 {
		// With no replica peer, the archives are where the blocks a
		// rebuilt node lost are: every log read, its own too, it has
		// them (antiEntropyRound leaves this to the relay).
		c.denyLearned("read every log in the archives")
	}
	return n
}

// hasArchive reports whether the peer list names an archive.
func (c *Cluster) hasArchive() bool {
	for _, r := range c.mem.Load().remotes {
		if _, ok := r.node.(*archiveNode); ok {
			return true
		}
	}
	return false
}

// keyOwnLogReadPrefix + archive URL: this node, whose metadata was
// rebuilt (or started afresh under its identity), has read its own log
// in that archive to the end once.
const keyOwnLogReadPrefix = "archive own log read "

// ownLogUnread reports whether this node is to read its own log in the
// archive at url: what it wrote there is not in metadata rebuilt since,
// and with the archive as its only peer, nothing else brings back its
// blocks, its deletes, or the records of the blobs a tier evicted
// (TestRebuiltNodeRereadsItsOwnLog). Otherwise what it wrote, it has (or
// newer).
func (c *Cluster) ownLogUnread(url string) bool {
	if !c.syncStore().RecordsLost() {
		return false
	}
	v, err := c.store.Value(keyOwnLogReadPrefix + url)
	return err == nil && v == nil
}

// keyArchiveDenyPrefix + archive URL: this node wrote its whole deny
// list to that archive once.
const keyArchiveDenyPrefix = "archive deny list "

// writeDenyList writes this node's deny list (blocks and lifts held) to
// an archive, once: nodes before this version acknowledged deny entries
// without keeping them in a bucket, so an archive whose cursor passed
// them has none of them (a new archive gets them in the feed, and a
// record written twice is the same record).
func (c *Cluster) writeDenyList(ctx context.Context, r *remote, an *archiveNode) error {
	key := keyArchiveDenyPrefix + r.URL
	if v, err := c.store.Value(key); err != nil || v != nil {
		return err
	}
	list, err := c.denyStore().DenyList()
	if err != nil {
		return err
	}
	for len(list) > 0 {
		n := min(len(list), maxChanges)
		if _, err := an.Offer(ctx, changesRequest{Deny: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return c.store.SetValue(key, []byte("written"))
}

// relayFrom applies what every other writer logged in one archive since
// this node's cursors.
func (c *Cluster) relayFrom(ctx context.Context, r *remote, an *archiveNode) (int, error) {
	writers, err := an.a.Writers(ctx)
	an.seen(err)
	if err != nil {
		return 0, err
	}
	self := c.store.NodeID()
	n := 0
	var firstErr error
	for _, w := range writers {
		own := w == self
		if own && !c.ownLogUnread(r.URL) {
			continue // what this node wrote, it has (or newer)
		}
		got, err := c.relayWriter(ctx, r, an, w)
		n += got
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("log of %s: %w", w, err)
		}
		if own && err == nil {
			if err := c.store.SetValue(keyOwnLogReadPrefix+r.URL, []byte("read")); err != nil && firstErr == nil {
				firstErr = err
			}
		}
	}
	return n, firstErr
}

// relayWriter applies one writer's log after this node's cursor, moving
// the cursor past each entry once all its IDs were applied (a failure
// holds it: the entry is read again next round).
func (c *Cluster) relayWriter(ctx context.Context, r *remote, an *archiveNode, writer string) (int, error) {
	key := keyRelayPrefix + r.URL + " " + writer
	var after uint64
	if v, err := c.store.Value(key); err == nil && v != nil {
		after, _ = strconv.ParseUint(string(v), 10, 64)
	}
	n := 0
	err := an.a.ReadLog(ctx, writer, after, 0, func(seq uint64, entries []archive.LogEntry) error {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(relayParallelism)
		for _, e := range entries {
			if e.Deny {
				if local, ok, err := c.denyStore().DenyEntry(e.ID); err == nil && ok && !(blobstore.Deny{Clock: e.Clock, Node: e.Node}).Newer(local) {
					continue
				}
				g.Go(func() error {
					err := c.relayDeny(gctx, r, an, e.ID)
					if errors.Is(err, errRelayClock) {
						// Dated too far ahead: set aside and tried
						// again until the clock has caught up, while
						// the log goes on.
						return c.parkAs(r, an, e.ID, err, true)
					}
					return err
				})
				continue
			}
			// What this node has already, or newer, costs no request:
			// every node that pushes to the archive names in its log
			// what it pushed, so most entries name states the reader
			// got from a peer. A newer record than the entry's, if
			// any, is named in its own writer's log.
			if local, err := c.store.Stat(e.ID); err == nil && !(dtfc.State{Clock: e.Clock, Node: e.Node}).Newer(local) {
				continue
			}
			g.Go(func() error {
				err := c.relayID(gctx, r, an, e.ID)
				if err == nil || gctx.Err() != nil {
					return err
				}
				// One ID that cannot be applied must not hold up the
				// rest of the log: it is set aside and tried again
				// later. Its blob corrupt or missing in the bucket; or
				// its newest record dated too far ahead, tried again
				// until the clock has caught up (a writer's log carries
				// records other nodes made too, and held there a year
				// it hid every record after it,
				// TestRelayClockAheadHoldsNoLog).
				return c.park(r, an, e.ID, err)
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		if err := c.store.SetValue(key, []byte(strconv.FormatUint(seq, 10))); err != nil {
			return err
		}
		n++
		return nil
	})
	an.seen(err)
	return n, err
}

// errRelayClock: a record refused for its clock; its ID is set aside
// and taken once this node's clock has caught up.
var errRelayClock = errors.New("a state's clock is too far ahead of this node's")

// relayClockError is errRelayClock for one ID's newest record, made by
// node.
type relayClockError struct {
	id   dtfc.ID
	node string
}

func (e *relayClockError) Error() string {
	return fmt.Sprintf("%s (a record by %s): %v", e.id, e.node, errRelayClock)
}

func (e *relayClockError) Unwrap() error { return errRelayClock }

// relayID applies id's newest record in the archive.
func (c *Cluster) relayID(ctx context.Context, r *remote, an *archiveNode, id dtfc.ID) error {
	st, err := an.a.NewestState(ctx, id)
	an.seen(err)
	if errors.Is(err, archive.ErrNotFound) {
		return nil // named, but no record: nothing to apply
	}
	if err != nil {
		return err
	}
	if err := validState(st); err != nil {
		c.log.Warn("an archive's state record is not valid; skipped", "archive", r.URL, "id", id.String(), "err", err)
		return nil
	}
	if err := c.syncStore().CheckClock(id, st.Clock); err != nil {
		c.metrics.clockRefusedIn.Inc()
		c.log.Warn("refused a state from an archive: its clock is too far ahead of this node's", "archive", r.URL, "err", err)
		return &relayClockError{id: id, node: st.Node}
	}
	an.relayNoted(stateKey(st))
	if st.Deleted {
		an.took[1].Add(1)
	} else {
		an.took[0].Add(1)
	}
	if c.isCache() && !st.Deleted {
		// A cache holds what was read through it, no more: an upload
		// only updates a copy it holds, and is never fetched for it.
		_, err := c.syncStore().Apply(st)
		if errors.Is(err, blobstore.ErrClockAhead) {
			c.refusedClock(err)
			return nil
		}
		return err
	}
	// pull takes a blob gone from its source for one deleted there
	// meanwhile, whose tombstone a later round brings; here the record
	// says otherwise, and no later round names the ID again. Any other
	// outcome is taken: applied, or not newer than what this node knows
	// (a state, a block, or a delete it forgot since: a tombstone applied
	// and forgotten here leaves no record, and used to be set aside for
	// ever, every time a log named its ID again).
	if err := c.pullStateFrom(ctx, r, st, c.syncStore().ApplyKept); errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%s: not taken from the archive (its blob is missing or unreadable there): %w", id, err)
	} else if err != nil {
		return err
	}
	return nil
}

// relayDeny applies id's newest deny record in the archive. A failure
// holds the writer's cursor (deny entries are few); a record that is not
// valid is skipped, never retried (it would hold the log for ever).
func (c *Cluster) relayDeny(ctx context.Context, r *remote, an *archiveNode, id dtfc.ID) error {
	d, err := an.a.NewestDeny(ctx, id)
	an.seen(err)
	if errors.Is(err, archive.ErrNotFound) {
		return nil // named, but no record: nothing to apply
	}
	if err != nil && !errors.Is(err, archive.ErrBadRecord) {
		return err
	}
	if err == nil {
		err = validDeny(d)
	}
	if err != nil {
		c.log.Warn("an archive's deny record is not valid; skipped", "archive", r.URL, "id", id.String(), "err", err)
		return nil
	}
	// Noted before it is applied: the pusher may offer it back at once.
	an.relayNoted(denyKey(d))
	ok, err := c.denyStore().ApplyDenyKept(d)
	if !ok {
		an.wasRelayed(denyKey(d)) // not in the feed: never offered back
	} else {
		an.took[2].Add(1)
	}
	if errors.Is(err, blobstore.ErrClockAhead) {
		c.refusedClock(err)
		return &relayClockError{id: id, node: d.Node}
	}
	if err != nil {
		return err
	}
	if ok {
		c.denyApplied(d)
	}
	return nil
}

// Parked IDs: named in an archive's log, but not applied (the blob's
// object corrupt or missing, a store error). They are kept, durably, per
// archive, and tried again with a backoff (parkFirst doubling to
// parkMax), while the relay goes on with the rest of the log. At most
// maxParked per archive: beyond, the writer's cursor holds as before.
const (
	keyParkedPrefix = "archive parked "
	// keyParkedDenyPrefix: the IDs set aside for their deny entries (a
	// record dated too far ahead).
	keyParkedDenyPrefix = "archive parked deny "
	parkFirst           = 10 * time.Second
	parkMax             = 5 * time.Minute
	maxParked           = 10_000
)

// errTooManyParked holds a writer's cursor when too many IDs are set
// aside already.
var errTooManyParked = errors.New("too many IDs set aside already")

// parked are an archive's IDs set aside, and when each is tried next.
type parked struct {
	mu      sync.Mutex
	loaded  bool
	next    map[dtfc.ID]time.Time
	backoff map[dtfc.ID]time.Duration
	// again are the IDs relayAgain asked for while they were parked:
	// one applied by a retry that began before stays parked, due now.
	again map[dtfc.ID]bool
}

// load reads the set persisted by an earlier run under key (under mu).
func (p *parked) load(store interface{ Value(string) ([]byte, error) }, key string) {
	if p.loaded {
		return
	}
	p.loaded = true
	p.next, p.backoff = map[dtfc.ID]time.Time{}, map[dtfc.ID]time.Duration{}
	v, err := store.Value(key)
	if err != nil || v == nil {
		return
	}
	for _, h := range strings.Fields(string(v)) {
		if id, err := dtfc.ParseID(h); err == nil {
			p.next[id], p.backoff[id] = time.Time{}, parkFirst
		}
	}
}

// save persists the set under key (under mu).
func (p *parked) save(store interface{ SetValue(string, []byte) error }, key string) error {
	ids := make([]string, 0, len(p.next))
	for id := range p.next {
		ids = append(ids, id.String())
	}
	slices.Sort(ids)
	return store.SetValue(key, []byte(strings.Join(ids, "\n")))
}

// parkedSet returns an archive's set of IDs set aside for their states,
// or for their deny entries, and the key prefix it is persisted under.
func (an *archiveNode) parkedSet(deny bool) (*parked, string) {
	if deny {
		return &an.parkedDeny, keyParkedDenyPrefix
	}
	return &an.parked, keyParkedPrefix
}

// park sets id aside, or returns an error that holds the cursor if it
// cannot be (the set is full, or cannot be persisted).
func (c *Cluster) park(r *remote, an *archiveNode, id dtfc.ID, cause error) error {
	return c.parkAs(r, an, id, cause, false)
}

// parkAs is park for id's state, or with deny for its deny entry.
func (c *Cluster) parkAs(r *remote, an *archiveNode, id dtfc.ID, cause error, deny bool) error {
	p, prefix := an.parkedSet(deny)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.load(c.store, prefix+r.URL)
	if at, ok := p.next[id]; !ok {
		if len(p.next) >= maxParked {
			return fmt.Errorf("%w (%d): %w", errTooManyParked, len(p.next), cause)
		}
		p.backoff[id] = parkFirst
	} else if at.After(time.Now()) {
		return nil // set aside already and not due (another log named it too)
	}
	p.next[id] = time.Now().Add(p.backoff[id])
	p.backoff[id] = min(2*p.backoff[id], parkMax)
	if err := p.save(c.store, prefix+r.URL); err != nil {
		delete(p.next, id)
		return err
	}
	c.log.Warn("an ID an archive's log names could not be applied; set aside, tried again later", "archive", r.URL, "id", id.String(), "deny", deny, "err", cause)
	return nil
}

// relayAgain has every archive's newest state of id applied again at the
// next relay round (set aside as due now, durably): after a lift, an
// upload the relay refused while the block held (Stale, its log entry
// passed) is taken then. No later log entry names it, and nodes linked
// only through a bucket have no anti-entropy to find it: such a node kept
// the block's tombstone for good while the bucket and the others held the
// upload (TestRelayUploadWhileBlockedAfterLift).
func (c *Cluster) relayAgain(id dtfc.ID) {
	for _, r := range c.mem.Load().remotes {
		an, ok := r.node.(*archiveNode)
		if !ok {
			continue
		}
		p := &an.parked
		p.mu.Lock()
		p.load(c.store, keyParkedPrefix+r.URL)
		if _, ok := p.next[id]; ok {
			// Parked already, perhaps being retried right now (with
			// the block still in force): tried again after that.
			if p.again == nil {
				p.again = map[dtfc.ID]bool{}
			}
			p.again[id] = true
			p.next[id] = time.Time{}
		} else if len(p.next) < maxParked {
			p.next[id], p.backoff[id] = time.Time{}, parkFirst
			if err := p.save(c.store, keyParkedPrefix+r.URL); err != nil {
				delete(p.next, id)
				c.log.Error("persisting the IDs set aside", "archive", r.URL, "err", err)
			}
		}
		p.mu.Unlock()
	}
}

// retryParked tries again the IDs set aside whose time has come: their
// states, then their deny entries.
func (c *Cluster) retryParked(ctx context.Context, r *remote, an *archiveNode) {
	for _, deny := range []bool{false, true} {
		p, prefix := an.parkedSet(deny)
		key := prefix + r.URL
		p.mu.Lock()
		p.load(c.store, key)
		var due []dtfc.ID
		now := time.Now()
		for id, at := range p.next {
			if !at.After(now) {
				due = append(due, id)
			}
		}
		p.mu.Unlock()
		for _, id := range due {
			if ctx.Err() != nil {
				return
			}
			p.mu.Lock()
			delete(p.again, id)
			p.mu.Unlock()
			var err error
			if deny {
				err = c.relayDeny(ctx, r, an, id)
			} else {
				err = c.relayID(ctx, r, an, id)
			}
			if err != nil {
				if ctx.Err() == nil {
					c.parkAs(r, an, id, err, deny) // later, with a longer backoff (a clock ahead too)
				}
				continue
			}
			p.mu.Lock()
			if p.again[id] {
				// A lift came while it was applied: once more.
				delete(p.again, id)
				p.next[id] = time.Time{}
				p.mu.Unlock()
				continue
			}
			delete(p.next, id)
			delete(p.backoff, id)
			if err := p.save(c.store, key); err != nil {
				c.log.Error("persisting the IDs set aside", "archive", r.URL, "err", err)
			}
			p.mu.Unlock()
			c.log.Info("an ID set aside was applied from the archive", "archive", r.URL, "id", id.String(), "deny", deny)
		}
	}
}

// tookCounts reads an's counts of records taken (archiveNode.took).
func (an *archiveNode) tookCounts() [3]int64 {
	return [3]int64{an.took[0].Load(), an.took[1].Load(), an.took[2].Load()}
}
