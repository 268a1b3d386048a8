package peer

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

const (
	// wholeRange: a range with at most this many records on both sides is
	// compared record by record without drilling down to sub-ranges.
	wholeRange = 1024
	// pullParallelism bounds the blobs pulled from one peer at once.
	pullParallelism = 16
	// lookupBatch is how many IDs a cache asks about per request.
	lookupBatch = 1000
)

// antiEntropyLoop compares this node with each peer at start-up and then
// every interval (with jitter, so nodes do not all hit one peer at once).
func (c *Cluster) antiEntropyLoop(ctx context.Context) {
	for {
		c.antiEntropyRound(ctx)
		d := time.Duration(float64(c.opts.AntiEntropyInterval) * (0.9 + 0.2*rand.Float64()))
		if !sleepCtx(ctx, d) {
			return
		}
	}
}

// AntiEntropy runs one round now and reports how many peers it completed
// with (tests and operators use it; the loop runs it periodically).
func (c *Cluster) AntiEntropy(ctx context.Context) int { return c.antiEntropyRound(ctx) }

func (c *Cluster) antiEntropyRound(ctx context.Context) int {
	var reps []*remote
	for _, r := range c.mem.Load().remotes {
		if !r.IsCache() {
			reps = append(reps, r)
		}
	}
	if len(reps) == 0 {
		c.setSynced()
		return 0
	}
	stale := c.checkStale()
	var orphans map[dtfc.ID]dtfc.State
	done, resyncingPeers := 0, 0
	for _, r := range reps {
		if ctx.Err() != nil {
			return done
		}
		var err error
		switch {
		case c.isCache():
			err = c.cacheSync(ctx, r)
		case stale && orphans == nil:
			orphans, err = c.syncWith(ctx, r, true)
		default:
			_, err = c.syncWith(ctx, r, false)
		}
		if errors.Is(err, errPeerResyncing) {
			resyncingPeers++
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
	if stale && done == 0 && resyncingPeers > 0 && resyncingPeers == c.reachableReplicas(reps) {
		// Every reachable replica is resyncing too: the whole cluster was
		// down, so nobody forgot anything in the meantime. Resume as is.
		c.endResync("every reachable replica was away as long; nothing to drop")
		return 0
	}
	if done == 0 {
		return 0
	}
	if stale {
		if orphans == nil {
			return done // no peer could vouch for the cluster's state yet
		}
		c.dropOrphans(ctx, reps, orphans)
		c.endResync("resync finished; replication resumes")
	}
	c.contact()
	c.setSynced()
	return done
}

// syncWith pulls from r every state newer than the local one, comparing
// digests first so that a pair of nodes in sync exchanges 256 digests and
// nothing more. In a resync it also returns the local states r has no
// record of (candidates for dropping).
func (c *Cluster) syncWith(ctx context.Context, r *remote, resync bool) (map[dtfc.ID]dtfc.State, error) {
	var ans digestsAnswer
	if err := r.getJSON(ctx, "/digests", &ans); err != nil {
		return nil, err
	}
	if resync && !ans.Synced {
		return nil, fmt.Errorf("peer %s is not in sync itself; cannot resync against it", r.URL)
	}
	if err := c.syncDeny(ctx, r, ans.Deny); err != nil {
		return nil, err
	}
	theirs, err := ans.decode()
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", r.URL, err)
	}
	ours, err := c.store.Digests()
	if err != nil {
		return nil, err
	}
	orphans := map[dtfc.ID]dtfc.State{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pullParallelism)
	for b := range 256 {
		if ours[b] == theirs[b] {
			continue
		}
		if ours[b].Count+theirs[b].Count <= wholeRange {
			if err := c.syncRange(gctx, g, r, []byte{byte(b)}, resync, orphans); err != nil {
				g.Wait()
				return nil, err
			}
			continue
		}
		var sub digestsAnswer
		if err := r.getJSON(gctx, fmt.Sprintf("/digests/%02x", b), &sub); err != nil {
			g.Wait()
			return nil, err
		}
		theirSub, err := sub.decode()
		if err != nil {
			g.Wait()
			return nil, fmt.Errorf("peer %s: %w", r.URL, err)
		}
		ourSub, err := c.store.SubDigests(byte(b))
		if err != nil {
			g.Wait()
			return nil, err
		}
		for sb := range 256 {
			if ourSub[sb] != theirSub[sb] {
				if err := c.syncRange(gctx, g, r, []byte{byte(b), byte(sb)}, resync, orphans); err != nil {
					g.Wait()
					return nil, err
				}
			}
		}
	}
	return orphans, g.Wait()
}

// syncRange compares the records of one ID range with r's and schedules a
// pull of each newer remote state on g.
func (c *Cluster) syncRange(ctx context.Context, g *errgroup.Group, r *remote, prefix []byte, resync bool, orphans map[dtfc.ID]dtfc.State) error {
	local := map[dtfc.ID]dtfc.State{}
	if err := c.store.States(prefix, func(st dtfc.State) error {
		local[st.ID] = st
		return nil
	}); err != nil {
		return err
	}
	resp, err := r.do(ctx, http.MethodGet, "/states?prefix="+hex.EncodeToString(prefix), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerErr(r.URL, resp)
	}
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for {
		var st dtfc.State
		if err := dec.Decode(&st); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("peer %s: reading states: %w", r.URL, err)
		}
		l, ok := local[st.ID]
		delete(local, st.ID)
		if ok && !st.Newer(l) {
			continue
		}
		g.Go(func() error { return c.pull(ctx, r, st) })
	}
	if resync {
		lastContact := dtfc.TimestampAt(c.contactTime())
		me := c.store.NodeID()
		for id, st := range local {
			// Known here, unknown there: deleted and forgotten while we
			// were away — unless this node made it after it lost touch
			// (an upload to it while it was cut off), which stays and is
			// pushed. A state received from another node was known to the
			// cluster, so the cluster forgetting it means a delete.
			if !st.Deleted && (st.Node != me || st.Clock <= lastContact) {
				orphans[id] = st
			}
		}
	}
	return nil
}

// pull applies one state from r, fetching its bytes if needed.
func (c *Cluster) pull(ctx context.Context, r *remote, st dtfc.State) error {
	out, err := c.store.Apply(st)
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
	resp, got, err := r.getBlob(ctx, st.ID, http.MethodGet)
	if errors.Is(err, errPeerNotFound) {
		return nil // deleted there meanwhile; its tombstone comes next round
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	bw, err := c.store.NewWriter(blobstore.WriterOptions{MaxBytes: got.Size, Size: got.Size})
	if err != nil {
		return err
	}
	defer bw.Close()
	if _, err := bw.ReadFrom(resp.Body); err != nil {
		return fmt.Errorf("pulling %s from %s: %w", st.ID, r.URL, err)
	}
	if _, err := bw.CommitState(got, true); err != nil {
		if errors.Is(err, blobstore.ErrDigestMismatch) {
			r.fail(fmt.Errorf("sent bytes for %s that do not match its SHA-512", st.ID))
		}
		return fmt.Errorf("pulling %s from %s: %w", st.ID, r.URL, err)
	}
	c.metrics.repairs.WithLabelValues("upload").Inc()
	return nil
}

// syncDeny pulls r's deny list when its digest differs from ours.
func (c *Cluster) syncDeny(ctx context.Context, r *remote, theirs string) error {
	ours, err := c.store.DenyDigest()
	if err != nil || ours == theirs {
		return err
	}
	var list denyRequest
	if err := r.getJSON(ctx, "/deny", &list); err != nil {
		return err
	}
	_, err = c.applyDenyList(list.Entries)
	return err
}

// cacheSync asks r about every blob the cache holds and applies what is
// newer: a cache learns of deletes even if a push to it was lost.
func (c *Cluster) cacheSync(ctx context.Context, r *remote) error {
	var d digestsAnswer
	if err := r.getJSON(ctx, "/digests", &d); err != nil {
		return err
	}
	if err := c.syncDeny(ctx, r, d.Deny); err != nil {
		return err
	}
	var ids []dtfc.ID
	if err := c.store.States(nil, func(st dtfc.State) error {
		if !st.Deleted {
			ids = append(ids, st.ID)
		}
		return nil
	}); err != nil {
		return err
	}
	for len(ids) > 0 {
		n := min(len(ids), lookupBatch)
		var ans lookupAnswer
		if err := r.callJSON(ctx, http.MethodPost, "/lookup", lookupRequest{IDs: ids[:n]}, &ans); err != nil {
			return err
		}
		ids = ids[n:]
		for _, st := range ans.States {
			out, err := c.store.Apply(st)
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

// dropOrphans forgets local states that no reachable, in-sync replica
// knows: uploads the cluster deleted and then forgot while this node was
// away longer than the tombstone retention.
func (c *Cluster) dropOrphans(ctx context.Context, reps []*remote, orphans map[dtfc.ID]dtfc.State) {
	if len(orphans) == 0 {
		return
	}
	ids := make([]dtfc.ID, 0, len(orphans))
	for id := range orphans {
		ids = append(ids, id)
	}
	for _, r := range reps {
		var d digestsAnswer
		if err := r.getJSON(ctx, "/digests", &d); err != nil || !d.Synced {
			continue
		}
		for start := 0; start < len(ids); start += lookupBatch {
			var ans lookupAnswer
			end := min(start+lookupBatch, len(ids))
			if err := r.callJSON(ctx, http.MethodPost, "/lookup", lookupRequest{IDs: ids[start:end]}, &ans); err != nil {
				return // keep everything rather than drop on partial knowledge
			}
			for _, st := range ans.States {
				delete(orphans, st.ID)
			}
		}
	}
	for id, st := range orphans {
		if err := c.store.Forget(id); err != nil {
			c.log.Error("dropping a state the cluster forgot", "id", id.String(), "err", err)
			continue
		}
		c.metrics.resyncDropped.Inc()
		c.log.Warn("dropped a file the cluster deleted while this node was away longer than the tombstone retention",
			"id", id.String(), "uploaded", st.Clock.Time())
	}
}

// reachableReplicas counts the replica peers that answered the last
// exchange (up), resyncing or not.
func (c *Cluster) reachableReplicas(reps []*remote) int {
	n := 0
	for _, r := range reps {
		if r.status().Up {
			n++
		}
	}
	return n
}

func (c *Cluster) endResync(msg string) {
	c.syncMu.Lock()
	c.resyncing = false
	c.lastContact = time.Now()
	c.syncMu.Unlock()
	c.saveContact(true)
	c.log.Info(msg)
}
