package peer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/sleep"
)

const (
	// wholeRange: a range with at most this many records on both sides is
	// compared record by record without drilling down to sub-ranges. A
	// sub-range request answers 256 digests (about 17 KB); listing a
	// range costs about 200 bytes a record: past a few hundred records,
	// drilling down is cheaper even when every sub-range differs
	// (BenchmarkAntiEntropyOnePercent at 10^5 IDs: 19.7 MB a round at
	// 1024, 5.2 MB at 256).
	wholeRange = 256
	// rangeParallelism bounds the ranges compared with one peer at once
	// (each a request or two, most of their time a round trip).
	rangeParallelism = 4
	// pullParallelism bounds the blobs pulled from one peer at once.
	pullParallelism = 16
	// lookupBatch is how many IDs a cache asks about per request.
	lookupBatch = 1000
)

// replicaSource lists what a peer holds: anti-entropy compares it with
// this node's, and so does a resync.
type replicaSource interface {
	// Digests returns the 256 range digests of the whole ID space
	// (prefix empty) or of one first byte's sub-ranges.
	Digests(ctx context.Context, prefix []byte) (digestsAnswer, error)
	// States streams the peer's states of the IDs beginning with prefix,
	// in ID order.
	States(ctx context.Context, prefix []byte, fn func(dtfc.State) error) error
	// Lookup returns the peer's states of ids (those it has a record of).
	Lookup(ctx context.Context, ids []dtfc.ID) ([]dtfc.State, error)
	// DenyList returns the peer's whole deny list, and the lifts it
	// forgot lately.
	DenyList(ctx context.Context) (denyList, error)
}

// syncStore is what anti-entropy needs of the blob store: its digests and
// states to compare, and the means to take a peer's newer state.
type syncStore interface {
	Digests() ([256]blobstore.Digest, error)
	SubDigests(first byte) ([256]blobstore.Digest, error)
	States(prefix []byte, fn func(dtfc.State) error) error
	Apply(st dtfc.State) (blobstore.Outcome, error)
	ApplyKept(st dtfc.State) (blobstore.Outcome, error)
	CheckClock(id dtfc.ID, c dtfc.Timestamp) error
	Open(id dtfc.ID) (*blobstore.Blob, error)
	DenyDigest() (string, error)
	DenyKnown() bool
	MarkDenyKnown() error
	RecordsLost() bool
}

func (c *Cluster) syncStore() syncStore { return c.store }

// antiEntropyLoop compares this node with each peer at start-up and then
// every interval (with jitter, so nodes do not all hit one peer at once);
// after a round that deferred a peer catching this node up, sooner
// (catchup.go).
func (c *Cluster) antiEntropyLoop(ctx context.Context) {
	for {
		_, deferred := c.antiEntropyRound(ctx)
		d := time.Duration(float64(c.opts.AntiEntropyInterval) * (0.9 + 0.2*rand.Float64()))
		if deferred {
			d = min(d, c.catchUp.window)
		}
		if sleep.For(ctx, d) != nil {
			return
		}
	}
}

// AntiEntropy runs one round now and reports how many peers it completed
// with (tests and operators use it; the loop runs it periodically). A
// peer catching this node up by pushes is not completed (catchup.go).
func (c *Cluster) AntiEntropy(ctx context.Context) int {
	done, _ := c.antiEntropyRound(ctx)
	return done
}

// antiEntropyRound compares with each replica peer and reports how many
// it completed with, and whether it deferred one.
func (c *Cluster) antiEntropyRound(ctx context.Context) (done int, deferred bool) {
	var reps []*remote
	all := c.replicaPeers()
	for _, r := range all {
		// Never import from a peer marked expired, here or by another
		// peer: it may hold what was deleted and forgotten.
		if !c.distrusts(r) {
			reps = append(reps, r)
		}
	}
	if len(reps) == 0 {
		c.synced.Store(true)
		if len(all) == 0 && !c.hasArchive() {
			// Peers distrusted are not none: their blocks are still to
			// learn (a rebuilt node takes no upload until then). Nor is
			// an archive: the relay learns them once it has read every
			// log there (relayRound).
			c.denyLearned("no replica peer to compare with")
		}
		return 0, false
	}
	for _, r := range reps {
		if ctx.Err() != nil {
			return done, deferred
		}
		var err error
		before := [2]int64{c.pulled[0].Load(), c.pulled[1].Load()}
		if c.isCache() {
			err = c.cacheSync(ctx, r)
		} else {
			err = c.syncWith(ctx, r)
		}
		if after := [2]int64{c.pulled[0].Load(), c.pulled[1].Load()}; after != before {
			c.log.Info("anti-entropy found states newer than this node's", "peer", r.URL, "uploads", after[0]-before[0], "deletes", after[1]-before[1])
		}
		if errors.Is(err, errPeerResyncing) || errors.Is(err, errPeerDistrusted) {
			continue
		}
		if errors.Is(err, errCatchingUp) {
			deferred = true
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				c.log.Info("anti-entropy with peer failed", "peer", r.URL, "err", err)
			}
			continue
		}
		done++
	}
	if done > 0 {
		c.synced.Store(true)
	}
	return done, deferred
}

// digestsOf asks r for its digests; a peer that is resyncing (it may
// hold states the cluster deleted) is errPeerResyncing: nothing is
// imported from it.
func (c *Cluster) digestsOf(ctx context.Context, r *remote, prefix []byte) (digestsAnswer, error) {
	ans, err := r.node.Digests(ctx, prefix)
	if err != nil {
		return ans, err
	}
	if ans.Resyncing {
		return ans, fmt.Errorf("peer %s: %w", r.URL, errPeerResyncing)
	}
	if c.distrusts(r) {
		// Its answer told its identity, or another peer's mark of it
		// came meanwhile: the round's choice, made before, is stale
		// (TestRoundImportsNothingFromPeerMarkedElsewhere).
		return ans, fmt.Errorf("peer %s: %w", r.URL, errPeerDistrusted)
	}
	return ans, nil
}

// errPeerDistrusted: the peer is marked expired, here or by another peer;
// nothing is imported from it.
var errPeerDistrusted = errors.New("peer is marked expired")

// syncWith pulls from r every state newer than the local one, comparing
// digests first so that a pair of nodes in sync exchanges 256 digests and
// nothing more. While r is catching this node up by pushes, it compares
// the deny lists only, and stops scheduling pulls if r begins to during
// the round: errCatchingUp (catchup.go).
func (c *Cluster) syncWith(ctx context.Context, r *remote) error {
	ans, err := c.digestsOf(ctx, r, nil)
	if err != nil {
		return err
	}
	if err := c.syncDeny(ctx, r, ans.Deny); err != nil {
		return err
	}
	theirs, err := ans.decode()
	if err != nil {
		return fmt.Errorf("peer %s: %w", r.URL, err)
	}
	ours, err := c.syncStore().Digests()
	if err != nil {
		return err
	}
	// The identity is known now: the digests' answer told it. Whether
	// r may be deferred is decided once for the round, so a round past
	// the bound runs to its end.
	node := r.NodeID()
	mayDefer := c.catchUp.mayDefer(node)
	catchingUp := func() bool { return mayDefer && c.catchUp.catchingUp(node) }
	if catchingUp() {
		return c.deferSync(r, node)
	}
	// Pulls go on g, range comparisons on rg: a comparison waits for a
	// pull's slot, never the other way round. A failed pull cancels
	// both (gctx); a failed comparison (the peer found resyncing, say)
	// stops the comparisons (rctx) but not the pulls already scheduled,
	// which run under gctx: rctx ends with the last comparison and would
	// cut them (TestAntiEntropyRoundPullsAll).
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pullParallelism)
	rg, rctx := errgroup.WithContext(gctx)
	rg.SetLimit(rangeParallelism)
	for b := range 256 {
		if ours[b] == theirs[b] {
			continue
		}
		if rctx.Err() != nil {
			break
		}
		rg.Go(func() error {
			return c.syncTopRange(rctx, gctx, g, r, byte(b), ours[b].Count+theirs[b].Count, catchingUp)
		})
	}
	err = rg.Wait()
	if gerr := g.Wait(); err == nil {
		err = gerr
	}
	if errors.Is(err, errCatchingUp) {
		return c.deferSync(r, node)
	}
	if err == nil {
		c.catchUp.compared(node)
	}
	return err
}

// syncTopRange compares the range of IDs starting with b with r's, both
// sides holding count records: record by record if they are few, else
// by its sub-ranges' digests first. It compares under ctx; pulls go on g,
// under pullCtx, until catchingUp says r began to catch this node up.
func (c *Cluster) syncTopRange(ctx, pullCtx context.Context, g *errgroup.Group, r *remote, b byte, count uint64, catchingUp func() bool) error {
	if count <= wholeRange {
		return c.syncRange(ctx, pullCtx, g, r, []byte{b}, catchingUp)
	}
	sub, err := c.digestsOf(ctx, r, []byte{b})
	if err != nil {
		return err
	}
	theirSub, err := sub.decode()
	if err != nil {
		return fmt.Errorf("peer %s: %w", r.URL, err)
	}
	ourSub, err := c.syncStore().SubDigests(b)
	if err != nil {
		return err
	}
	for sb := range 256 {
		if ourSub[sb] != theirSub[sb] {
			if err := c.syncRange(ctx, pullCtx, g, r, []byte{b, byte(sb)}, catchingUp); err != nil {
				return err
			}
		}
	}
	return nil
}

// syncRange compares the records of one ID range with r's under ctx, and
// schedules a pull of each newer remote state on g, under pullCtx. It
// stops with errCatchingUp once catchingUp says r is catching this node
// up by pushes (the pulls already scheduled run on: at most
// pullParallelism of them).
func (c *Cluster) syncRange(ctx, pullCtx context.Context, g *errgroup.Group, r *remote, prefix []byte, catchingUp func() bool) error {
	local := map[dtfc.ID]dtfc.State{}
	if err := c.syncStore().States(prefix, func(st dtfc.State) error {
		local[st.ID] = st
		return nil
	}); err != nil {
		return err
	}
	return r.node.States(ctx, prefix, func(st dtfc.State) error {
		if l, ok := local[st.ID]; ok && !st.Newer(l) {
			return nil
		}
		if err := validState(st); err != nil {
			return fmt.Errorf("peer %s: state of %s: %w", r.URL, st.ID, err)
		}
		if catchingUp() {
			return errCatchingUp
		}
		g.Go(func() error { return c.pull(pullCtx, r, st) })
		return nil
	})
}

// pull applies one state from r, fetching its bytes if needed.
func (c *Cluster) pull(ctx context.Context, r *remote, st dtfc.State) error {
	err := c.pullState(ctx, r, st)
	if err == nil {
		c.pulled[boolIndex(st.Deleted)].Add(1)
	}
	if errors.Is(err, ErrNotFound) {
		// Deleted there meanwhile, most likely: its tombstone comes next
		// round. Said, so that an upload no holder can send (a fault of
		// theirs or of the transfer) does not go unseen round after round.
		c.log.Info("anti-entropy: a peer listed an upload whose bytes no peer sent", "peer", r.URL, "id", st.ID.String(), "err", err)
		return nil
	}
	return err
}

// pullState is pull, but an upload whose bytes no holder could send is
// ErrNotFound (the relay's: no later round names the ID again).
func (c *Cluster) pullState(ctx context.Context, r *remote, st dtfc.State) error {
	return c.pullStateFrom(ctx, r, st, c.syncStore().Apply)
}

// pullStateFrom is pullState, the state applied by apply (the relay's:
// blobstore.Store.ApplyKept).
func (c *Cluster) pullStateFrom(ctx context.Context, r *remote, st dtfc.State, apply func(dtfc.State) (blobstore.Outcome, error)) error {
	if c.distrusts(r) {
		return fmt.Errorf("peer %s: %w", r.URL, errPeerDistrusted) // since the pull was scheduled
	}
	out, err := apply(st)
	if errors.Is(err, blobstore.ErrClockAhead) {
		c.refusedClock(err)
		return nil // refused; counted and logged
	}
	if err != nil {
		return err
	}
	switch out {
	case blobstore.Applied:
		c.metrics.repairs.WithLabelValues(kindOf(st)).Inc()
		return nil
	case blobstore.Stale:
		return nil
	}
	// Through the fetcher: one transfer per ID whoever asks (a client's
	// miss of the same blob shares it), resumed if it is cut.
	err = c.fetch.pull(ctx, st.ID, r, func() bool {
		b, err := c.syncStore().Open(st.ID)
		if err == nil {
			b.Close()
		}
		return err == nil
	})
	switch {
	case errors.Is(err, blobstore.ErrClockAhead):
		c.refusedClock(err)
		return nil
	case err != nil:
		return fmt.Errorf("pulling %s from %s: %w", st.ID, r.URL, err)
	}
	c.metrics.repairs.WithLabelValues("upload").Inc()
	return nil
}

// syncDeny pulls r's deny list when its digest differs from ours. Once
// it has (or the lists were equal), a store whose deny list was lost
// takes uploads again.
func (c *Cluster) syncDeny(ctx context.Context, r *remote, theirs string) error {
	ours, err := c.syncStore().DenyDigest()
	if err != nil {
		return err
	}
	if ours != theirs {
		list, err := r.node.DenyList(ctx)
		if err != nil {
			return err
		}
		if _, err := c.applyDenyList(list.Entries); err != nil {
			return err
		}
	}
	c.denyLearned("compared with " + r.URL)
	return nil
}

// denyLearned marks the store's deny list complete, if it was not (its
// metadata was rebuilt): the node takes uploads again.
func (c *Cluster) denyLearned(how string) {
	if c.syncStore().DenyKnown() {
		return
	}
	if err := c.syncStore().MarkDenyKnown(); err != nil {
		c.log.Error("recording that the deny list is complete again", "err", err)
		return
	}
	c.log.Info("learned the blocks the peers hold after the metadata was rebuilt; taking uploads again", "how", how)
}

// cacheSync asks r about every blob the cache holds and applies what is
// newer: a cache learns of deletes even if a push to it was lost.
func (c *Cluster) cacheSync(ctx context.Context, r *remote) error {
	d, err := c.digestsOf(ctx, r, nil)
	if err != nil {
		return err
	}
	if err := c.syncDeny(ctx, r, d.Deny); err != nil {
		return err
	}
	var ids []dtfc.ID
	if err := c.syncStore().States(nil, func(st dtfc.State) error {
		if !st.Deleted {
			ids = append(ids, st.ID)
		}
		return nil
	}); err != nil {
		return err
	}
	for len(ids) > 0 {
		n := min(len(ids), lookupBatch)
		states, err := r.node.Lookup(ctx, ids[:n])
		if err != nil {
			return err
		}
		if c.distrusts(r) {
			return fmt.Errorf("peer %s: %w", r.URL, errPeerDistrusted)
		}
		ids = ids[n:]
		for _, st := range states {
			out, err := c.syncStore().Apply(st)
			if errors.Is(err, blobstore.ErrClockAhead) {
				c.refusedClock(err)
				continue
			}
			if err != nil {
				return err
			}
			if out == blobstore.Applied {
				c.metrics.repairs.WithLabelValues(kindOf(st)).Inc()
			}
		}
	}
	return nil
}

// boolIndex is 1 for true, 0 for false.
func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}
