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
			// What this node has already, or newer, costs no request:
			// every node that pushes to the archive names in its log
			// what it pushed, so most entries name states the reader
			// got from a peer. A newer record than the entry's, if
			// any, is named in its own writer's log.
			if local, err := c.store.Stat(e.ID); err == nil && !(dtfc.State{Clock: e.Clock, Node: e.Node}).Newer(local) {
				continue
			}
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
