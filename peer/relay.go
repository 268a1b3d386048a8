package peer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
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
// archive (verified before they are kept or served). Two nodes whose only
// common peer is the bucket converge through it.

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
	for _, r := range c.mem.Load().remotes {
		an, ok := r.node.(*archiveNode)
		if !ok || ctx.Err() != nil {
			continue
		}
		if r.isExpired() {
			// Never import from an archive marked expired: it may hold
			// uploads whose deletes were forgotten here without it.
			// It is brought up to date instead, and then relayed from.
			if err := c.resyncArchive(ctx, r, an); err != nil {
				if ctx.Err() == nil {
					c.log.Info("bringing an expired archive up to date failed; retried next round", "archive", r.URL, "err", err)
				}
				continue
			}
		}
		got, err := c.relayFrom(ctx, r, an)
		n += got
		if err != nil && ctx.Err() == nil {
			c.log.Info("relay from an archive failed; retried next round", "archive", r.URL, "err", err)
		}
	}
	return n
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
		if w == self {
			continue // what this node wrote, it has (or newer)
		}
		got, err := c.relayWriter(ctx, r, an, w)
		n += got
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("log of %s: %w", w, err)
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
			g.Go(func() error { return c.relayID(gctx, r, an, e.ID) })
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

// errRelayClock holds a writer's cursor at a state refused for its
// clock: it is taken once this node's clock has caught up.
var errRelayClock = errors.New("a state's clock is too far ahead of this node's")

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
	if c.opts.MaxClockOffset > 0 && st.Clock.Time().Sub(c.opts.Wall()) > c.opts.MaxClockOffset {
		c.metrics.clockRefusedIn.Inc()
		c.log.Warn("refused a state from an archive: its clock is too far ahead of this node's", "archive", r.URL, "id", id.String(), "clock", st.Clock.String())
		return fmt.Errorf("%s: %w", id, errRelayClock)
	}
	an.relayNoted(st)
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
	return c.pull(ctx, r, st)
}

// resyncArchive brings an archive this node marked expired up to date:
// every ID in the bucket whose newest record is older than a delete this
// node forgot without the archive's acknowledgement gets that delete's
// record (the memory of forgotten deletes is kept while any peer is
// marked expired: blobstore.PruneForgotten, maintenance.go), then the
// mark is lifted, unless it was raised meanwhile (more was forgotten
// without the archive: the next round does it again). Nothing else is
// missing from the archive: the pusher sends it every change still in
// the feed.
func (c *Cluster) resyncArchive(ctx context.Context, r *remote, an *archiveNode) error {
	// No purge meanwhile: a delete it would forget without the archive
	// (the mark's horizon unchanged, the memory written after the scan
	// passed) would be missed by the scan and then by the lift.
	c.purgeMu.Lock()
	defer c.purgeMu.Unlock()
	mark, ok := c.markOf(r)
	if !ok {
		return nil
	}
	var logged []archive.LogEntry
	flush := func() error {
		err := an.appendLog(ctx, logged)
		logged = logged[:0]
		return err
	}
	written := 0
	err := an.a.EachID(ctx, func(id dtfc.ID, clock dtfc.Timestamp, node string) error {
		t, ok := c.store.Forgotten(id)
		if !ok || !t.Deleted || !t.Newer(dtfc.State{Clock: clock, Node: node}) {
			return nil
		}
		if err := an.putState(ctx, t); err != nil {
			return err
		}
		written++
		if logged = append(logged, logEntry(t)); len(logged) >= pushBatch {
			return flush()
		}
		return nil
	})
	an.seen(err)
	if err == nil {
		err = flush()
	}
	if err != nil {
		return err
	}
	key := r.identity()
	c.expired.mu.Lock()
	cur, ok := c.expired.marks[key]
	if !ok || cur.Horizon != mark.Horizon {
		c.expired.mu.Unlock()
		return nil
	}
	delete(c.expired.marks, key)
	c.expired.mu.Unlock()
	if err := c.saveExpiries(key); err != nil {
		c.expired.mu.Lock()
		c.expired.marks[key] = cur
		c.expired.mu.Unlock()
		return err
	}
	c.applyMarks()
	c.log.Info("an expired archive was brought up to date; its expiry is lifted", "archive", r.URL, "deletes_written", written)
	return nil
}
