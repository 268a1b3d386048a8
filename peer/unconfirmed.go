package peer

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/sleep"
)

// Unconfirmed blobs are verified blob files whose state this node does
// not know: its metadata was rebuilt (dtfc rebuild-meta), or an upload
// was cut by a crash before its commit (see blobstore/unconfirmed.go).
// The store never serves, pushes or offers them. The cluster decides
// each one:
//
//   - the node's own record, if it has one meanwhile (a push, a fetch,
//     an upload of the same bytes), settles it;
//   - without peers, the node adopts it with its file's clock (below),
//     unless it forgot a newer delete of it lately: nobody can tell it
//     otherwise;
//   - with peers, each is asked (GET /_internal/state/{id}), and the
//     newest of what anyone can tell wins: a peer's record, a delete a
//     peer (or this node) forgot lately, and the file itself, whose
//     modification time records the clock of the operation that made it
//     live here (blobstore/filetime.go). A present state is adopted with
//     its clock and node (the file goes back into blobs/, nothing is
//     downloaded, and the record enters the change feed like any
//     applied remote state), a tombstone is applied and the file
//     removed; a file newer than everything its peers know is an upload
//     this node took and never passed on (after a delete since
//     forgotten, perhaps), adopted with its own clock;
//   - if every peer answered that it knows nothing, the blob is adopted
//     with its file's clock, unless a peer said this node missed deletes
//     it forgot: then it stays where it is, logged once and counted in
//     /_status, for a rebuilt node must never resurrect a file the
//     cluster deleted and has forgotten;
//   - if some peer could not be asked, the blob is asked about again
//     later, backing off from 0.5 s to 30 s, or as soon as a peer that
//     had failed answers again; a peer this node marked expired is
//     asked too, but not waited for (/_status counts these blobs as
//     cluster.unconfirmed_pending).
//
// Blobs no peer knew are asked about again every unconfirmedRecheck, in
// case the peer list changed.

const (
	// unconfirmedPage is how many entries are read from the store at a
	// time.
	unconfirmedPage = 256
	// unconfirmedParallel bounds the blobs asked about at once.
	unconfirmedParallel = 4
	// unconfirmedFirstPass bounds the pass at start-up, which runs before
	// anti-entropy (so a blob a peer holds is adopted, not downloaded);
	// what it does not reach is done in the background.
	unconfirmedFirstPass = 30 * time.Second
	// unconfirmedRecheck is how often blobs no peer knew are asked about
	// again.
	unconfirmedRecheck = time.Hour
)

// unconfirmedStore is what settling unconfirmed blobs needs of the blob store.
type unconfirmedStore interface {
	UnconfirmedCount() int64
	Unconfirmed(after dtfc.ID, limit int) ([]blobstore.UnconfirmedBlob, error)
	ResolveUnconfirmed(id dtfc.ID, st *dtfc.State) (blobstore.UnconfirmedOutcome, error)
	FileState(u blobstore.UnconfirmedBlob) (st dtfc.State, recorded bool)
	Forgotten(id dtfc.ID) (dtfc.State, bool)
	AdoptUnconfirmed(id dtfc.ID) (blobstore.UnconfirmedOutcome, error)
	UnconfirmedPath(id dtfc.ID) string
	UnconfirmedNews() <-chan struct{}
}

func (c *Cluster) unconfirmedStore() unconfirmedStore { return c.store }

// unconfirmedResolver resolves the unconfirmed blobs of one Cluster run.
type unconfirmedResolver struct {
	c *Cluster
	// logged holds the blobs already logged as left unconfirmed: each
	// is logged once.
	logged sync.Map
}

// resolveUnconfirmed runs a first pass over the unconfirmed blobs, if
// there are any, then leaves further passes to a loop of the Cluster's.
// Run calls it before anti-entropy starts.
func (c *Cluster) resolveUnconfirmed(ctx context.Context) {
	ur := &unconfirmedResolver{c: c}
	retry := false
	// Taken before each pass: news during it wakes the wait after it.
	news := c.unconfirmedStore().UnconfirmedNews()
	if n := c.unconfirmedStore().UnconfirmedCount(); n > 0 {
		c.log.Info("resolving unconfirmed blobs: files this node holds without knowing their state",
			"count", n, "peers", len(c.mem.Load().remotes))
		c.unconfirmedPending.Store(n)
		fctx, cancel := context.WithTimeout(ctx, unconfirmedFirstPass)
		retry = ur.pass(fctx)
		cancel()
		retry = retry || fctx.Err() != nil
	}
	c.goLoop(ctx, func(ctx context.Context) { ur.loop(ctx, retry, news) })
}

// loop passes again over the unconfirmed blobs: soon (with backoff)
// while some need asking again, hourly otherwise, and at once when the
// store says one may now be decided (a lift of a block whose tombstone
// is forgotten: UnconfirmedNews). With none left it waits for that news
// alone: a node that starts with none may set some aside later.
func (ur *unconfirmedResolver) loop(ctx context.Context, retry bool, news <-chan struct{}) {
	c := ur.c
	failures := 0
	for {
		var t *time.Timer
		var tick <-chan time.Time
		// A peer that answers again may be the one a blob waits for:
		// then at once (at most every minBackoff).
		var back <-chan struct{}
		if c.unconfirmedStore().UnconfirmedCount() > 0 {
			d := unconfirmedRecheck
			if retry {
				failures++
				d = min(minBackoff<<min(failures-1, 10), maxBackoff)
				back = c.peerBack.Wait()
			} else {
				failures = 0
			}
			t = time.NewTimer(d)
			tick = t.C
		} else {
			c.unconfirmedPending.Store(0)
			retry, failures = false, 0
		}
		select {
		case <-ctx.Done():
		case <-tick:
		case <-news:
		case <-back:
			sleep.For(ctx, minBackoff)
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		news = c.unconfirmedStore().UnconfirmedNews()
		retry = ur.pass(ctx)
	}
}

// unconfirmedTally counts what a pass did.
type unconfirmedTally struct {
	mu                                               sync.Mutex
	adopted, deleted, settled, left, retry, failures int
}

func (t *unconfirmedTally) add(f *int) {
	t.mu.Lock()
	*f++
	t.mu.Unlock()
}

// pass tries to resolve every unconfirmed blob once. It
// reports whether some should be asked about again soon (a peer could not
// be asked, or the store failed).
func (ur *unconfirmedResolver) pass(ctx context.Context) bool {
	c := ur.c
	// This node itself (listed under another URL) is nobody to ask.
	var remotes []*remote
	for _, r := range c.mem.Load().remotes {
		if !r.Self() {
			remotes = append(remotes, r)
		}
	}
	var tally unconfirmedTally
	// A peer that fails once in a pass is not asked again in it: one
	// timeout per unreachable peer, not one per blob.
	var downMu sync.Mutex
	down := map[*remote]bool{}
	isDown := func(r *remote) bool { downMu.Lock(); defer downMu.Unlock(); return down[r] }
	setDown := func(r *remote) { downMu.Lock(); down[r] = true; downMu.Unlock() }

	var after dtfc.ID
	for ctx.Err() == nil {
		page, err := c.unconfirmedStore().Unconfirmed(after, unconfirmedPage)
		if err != nil {
			c.log.Error("reading the unconfirmed blobs", "err", err)
			return true
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].ID
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(unconfirmedParallel)
		for _, u := range page {
			g.Go(func() error {
				ur.resolveOne(gctx, u, remotes, isDown, setDown, &tally)
				return nil
			})
		}
		_ = g.Wait()
	}
	if ctx.Err() != nil {
		// Cut short: what it did not reach is still to ask about.
		c.unconfirmedPending.Store(c.unconfirmedStore().UnconfirmedCount() - int64(tally.left))
		return true
	}
	c.unconfirmedPending.Store(int64(tally.retry + tally.failures))
	if tally.adopted+tally.deleted+tally.settled+tally.retry+tally.failures > 0 {
		c.log.Info("unconfirmed blobs: pass done", "adopted", tally.adopted, "deleted", tally.deleted,
			"settled", tally.settled, "left", tally.left, "to_ask_again", tally.retry, "failed", tally.failures)
	}
	if tally.retry > 0 {
		c.log.Warn("could not ask every peer about some unconfirmed blobs; will ask again", "count", tally.retry)
	}
	return tally.retry > 0 || tally.failures > 0
}

// resolveOne decides one unconfirmed blob, if anything can.
func (ur *unconfirmedResolver) resolveOne(ctx context.Context, u blobstore.UnconfirmedBlob, remotes []*remote,
	isDown func(*remote) bool, setDown func(*remote), tally *unconfirmedTally) {
	c, id := ur.c, u.ID
	out, err := c.unconfirmedStore().ResolveUnconfirmed(id, nil)
	if err == nil && out == blobstore.UnconfirmedBlocked {
		// Set aside by a block, back with its lift: nothing to ask.
		tally.add(&tally.left)
		return
	}
	if err == nil && out == blobstore.UnconfirmedPending {
		// known is the newest state of id anyone can tell of: a delete
		// this node forgot lately, a peer's record, or a delete a peer
		// forgot lately.
		var known *dtfc.State
		complete := true // every peer answered
		if f, ok := c.unconfirmedStore().Forgotten(id); ok {
			known = &f
		}
		if len(remotes) > 0 {
			var st *dtfc.State
			var unasked int
			st, unasked, err = c.askAboutUnconfirmed(ctx, id, remotes, isDown, setDown)
			complete = unasked == 0
			if st != nil && (known == nil || st.Newer(*known)) {
				known = st
			}
		}
		if err == nil {
			out, err = ur.decide(u, known, len(remotes) == 0, complete)
		}
	}
	if errors.Is(err, errAskAgain) {
		tally.add(&tally.retry)
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("could not resolve an unconfirmed blob", "id", id.String(), "err", err)
		}
		tally.add(&tally.failures)
		return
	}
	switch out {
	case blobstore.UnconfirmedAdopted:
		tally.add(&tally.adopted)
	case blobstore.UnconfirmedDeleted:
		tally.add(&tally.deleted)
	case blobstore.UnconfirmedSettled:
		tally.add(&tally.settled)
	case blobstore.UnconfirmedPending, blobstore.UnconfirmedBlocked:
		tally.add(&tally.left)
	}
}

// errAskAgain is decide's word that it needs every peer's answer.
var errAskAgain = errors.New("some peer could not be asked")

// decide resolves unconfirmed blob u, of which this node has no record,
// given known, the newest state of its ID anyone could tell of (nil if
// none; alone: the node has no peer to ask; complete: every peer
// answered). A state some peer holds is adopted (or applied) even if
// not every peer answered: it is an ordinary state, and any newer one
// wins over it later as anywhere. The file's own word needs every
// peer's (errAskAgain).
//
// The file itself tells of a state too (Store.FileState): present since
// the clock its modification time records, the clock of the operation
// that made it live here. The newest of the two wins: a delete newer
// than the file (one this node missed, or forgot) removes it, and a file
// newer than every state anyone knows (an upload this node took after a
// delete, forgotten since, and never passed on before its metadata was
// lost) is adopted with its own clock rather than deleted.
func (ur *unconfirmedResolver) decide(u blobstore.UnconfirmedBlob, known *dtfc.State, alone, complete bool) (blobstore.UnconfirmedOutcome, error) {
	c, id := ur.c, u.ID
	file, recorded := c.unconfirmedStore().FileState(u)
	if known == nil && !complete {
		return blobstore.UnconfirmedPending, errAskAgain
	}
	if known != nil {
		// A file dated with the known state's clock is that state's
		// (made by whichever node): only a later clock is another.
		if u.Clock <= known.Clock {
			return c.unconfirmedStore().ResolveUnconfirmed(id, known)
		}
		if !complete {
			return blobstore.UnconfirmedPending, errAskAgain
		}
		out, err := c.unconfirmedStore().ResolveUnconfirmed(id, &file)
		if err == nil && out == blobstore.UnconfirmedAdopted {
			c.log.Warn("adopted an unconfirmed blob whose file is newer than every state its peers know (an upload this node never passed on before its metadata was lost)",
				"id", id.String(), "bytes", u.Size, "clock", file.Clock.String(), "newest_known", known.Clock.String(), "known_deleted", known.Deleted)
		}
		return out, err
	}
	horizon, missed := c.resync.missedBefore()
	if !alone && (c.resync.holds() || (missed && (!recorded || file.Clock <= horizon))) {
		// Nobody knows it, and a peer says this node missed deletes it
		// forgot: one of them may have been of this file, and nobody
		// remembers it to compare. Not so for an upload this node
		// recorded (one a block set aside) newer than every such delete
		// (each is older than its expiry's horizon): it wins over them as
		// over any older delete (TestLiftAfterBlockForgottenOnceExpired).
		// A stray file's time is not trusted that far.
		if _, seen := ur.logged.LoadOrStore(id, true); !seen {
			c.log.Warn("left unconfirmed: no peer knows this blob, and this node was told it missed deletes its peers forgot; it stays out of blobs/, never served or replicated",
				"id", id.String(), "bytes", u.Size, "path", c.unconfirmedStore().UnconfirmedPath(id))
		}
		return blobstore.UnconfirmedPending, nil
	}
	if c.isCache() && !alone && file.Clock.Time().Before(c.opts.Wall().Add(-c.opts.TombstoneRetention-c.opts.TombstoneExpiry)) {
		// On a cache nobody need list, a file no peer knows may be a
		// read-through copy of a file deleted since, whose delete every
		// replica forgot without the cache's acknowledgement (they do
		// not wait for a node they do not list): adopted, it was pushed
		// to them as an upload (TestRebuiltUnlistedCacheAdoptsNoDeletedCopy).
		// Only an older one: a delete after a newer file is still in
		// some replica's memory of what it forgot, which it answers.
		if _, seen := ur.logged.LoadOrStore(id, true); !seen {
			c.log.Warn("left unconfirmed: no peer knows this blob, and on a cache a file older than tombstone_retention + tombstone_expiry may be a copy of one deleted and forgotten since; it stays out of blobs/, never served or replicated",
				"id", id.String(), "bytes", u.Size, "clock", file.Clock.String(), "path", c.unconfirmedStore().UnconfirmedPath(id))
		}
		return blobstore.UnconfirmedPending, nil
	}
	out, err := c.unconfirmedStore().AdoptUnconfirmed(id)
	if err == nil && !alone && out == blobstore.UnconfirmedAdopted {
		// Every peer answered that it knows nothing of it, none forgot a
		// delete of it lately, and none says this node missed deletes it
		// forgot: a file in blobs/ was live here (a delete this node
		// applied removed it), so no delete of it can have been
		// forgotten without this node's acknowledgement. It is an upload
		// this node took and never passed on.
		c.log.Warn("adopted an unconfirmed blob no peer knows (an upload this node never passed on before its metadata was lost)",
			"id", id.String(), "bytes", u.Size, "clock", file.Clock.String())
	}
	return out, err
}

// askAboutUnconfirmed asks every peer for its state of id and returns
// the newest answered (nil if none), and how many peers could not be
// asked. A peer this node marked expired is asked too (what it says is
// as good as anyone's), but is not waited for: it has not answered for
// the expiry already.
func (c *Cluster) askAboutUnconfirmed(ctx context.Context, id dtfc.ID, remotes []*remote,
	isDown func(*remote) bool, setDown func(*remote)) (*dtfc.State, int, error) {
	var best *dtfc.State
	unasked := 0
	for _, r := range remotes {
		waited := 1
		if r.isExpired() {
			waited = 0
		}
		if isDown(r) {
			unasked += waited
			continue
		}
		ans, err := r.node.Stat(ctx, id)
		st := ans.State
		switch {
		case err == nil:
			if st.ID != id || validState(st) != nil {
				c.log.Warn("a peer answered an invalid state for an unconfirmed blob", "peer", r.URL, "id", id.String())
				unasked += waited
				continue
			}
			if best == nil || st.Newer(*best) {
				best = &st
			}
		case errors.Is(err, errPeerNotFound):
			// It has no record of id.
		default:
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			unasked += waited
			if !errors.Is(err, errPeerResyncing) {
				setDown(r)
			}
		}
	}
	return best, unasked, nil
}
