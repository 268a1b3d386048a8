package peer

import (
	"context"
	"strconv"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/sleep"
)

const keyLastScrub = "last_scrub" // unix ms of the last finished scrub pass

// upkeepStore is what the periodic upkeep needs of the blob store: purging what
// every peer has, scrubbing, flushing access times.
type upkeepStore interface {
	FlushAccess() error
	SweepPartials() error
	PurgeTombstones(before dtfc.Timestamp, forget func(seq uint64, clock dtfc.Timestamp) bool) (int, error)
	PurgeLifts(before dtfc.Timestamp, forget func(seq uint64, clock dtfc.Timestamp) bool) (int, error)
	PruneForgotten(before time.Time) (int, error)
	PastForgetting() time.Time
	Scrub(ctx context.Context, bytesPerSec int64, onCorrupt func(dtfc.State)) error
	ScrubProgress() blobstore.ScrubProgress
	Value(key string) ([]byte, error)
	SetValue(key string, v []byte) error
}

func (c *Cluster) upkeepStore() upkeepStore { return c.store }

// maintenanceLoop forgets tombstones and lifted blocks that are older than
// the retention and that every peer accepted (see acks.go), removes
// partial transfers nobody will resume, and for a cache persists its read
// order and keeps it under its size.
func (c *Cluster) maintenanceLoop(ctx context.Context) {
	purgeEvery := c.purgeEvery()
	tick := time.NewTicker(min(purgeEvery, 5*time.Second))
	defer tick.Stop()
	var lastPurge time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(lastPurge) >= purgeEvery {
			lastPurge = time.Now()
			c.purge()
			if err := c.upkeepStore().SweepPartials(); err != nil {
				c.log.Warn("removing stale partial transfers", "err", err)
			}
		} else if now := c.opts.Wall(); c.prunePending.Load() ||
			c.upkeepStore().PastForgetting().After(now.Add(-c.opts.TombstoneExpiry)) {
			// The prune at start waited for a peer's clock; or this
			// node's clock went back, and the horizon of old news is
			// ahead of it: set it again now, not at the next purge.
			c.pruneForgotten(now)
		}
		if c.isCache() {
			if err := c.upkeepStore().FlushAccess(); err != nil {
				c.log.Warn("persisting the cache's read order", "err", err)
			}
			c.evict(0)
		}
	}
}

// purgeEvery is how often purge runs: a tenth of the retention, within
// a second and an hour.
func (c *Cluster) purgeEvery() time.Duration {
	return min(max(c.opts.TombstoneRetention/10, time.Second), time.Hour)
}

// purge forgets what may be forgotten now (acks.go).
func (c *Cluster) purge() {
	now := c.opts.Wall()
	horizon := dtfc.TimestampAt(now.Add(-c.opts.TombstoneRetention))
	expirySeq := c.tickFeedClock(now)
	switch ahead, ok := c.aheadOfPeers(); {
	case c.isCache():
		// A cache holds what was read through it, no more: a replica
		// resyncing against it would take every file the cache never
		// read for deleted. It waits for every acknowledgement.
		expirySeq = 0
	case ok && ahead > c.opts.MaxClockOffset:
		// With a wall clock far ahead, everything looks old: nothing is
		// forgotten for its age past the expiry (only by acknowledgement).
		expirySeq = 0
		if !c.clockAhead.Swap(true) {
			c.log.Warn("this node's clock is ahead of every peer's; no peer is expired until it is set right",
				"ahead", ahead.Round(time.Second), "max_clock_offset", c.opts.MaxClockOffset)
		}
	default:
		c.clockAhead.Store(false)
	}
	peers := c.acks()
	if err := c.markLate(horizon, expirySeq, peers); err != nil {
		c.log.Error("marking peers expired; nothing they have not acknowledged is forgotten", "err", err)
	}
	if n, err := c.upkeepStore().PurgeTombstones(horizon, c.mayForget(peers)); err != nil {
		c.log.Error("forgetting old tombstones", "err", err)
	} else if n > 0 {
		c.metrics.tombstonesPurged.Add(float64(n))
		c.log.Info("forgot tombstones every peer acknowledged, older than the retention", "count", n)
	}
	if n, err := c.upkeepStore().PurgeLifts(horizon, c.mayForget(peers)); err != nil {
		c.log.Error("forgetting lifted blocks", "err", err)
	} else if n > 0 {
		c.log.Info("forgot lifted blocks every peer acknowledged, older than the retention", "count", n)
	}
	c.pruneForgotten(now)
}

// pruneForgotten drops the memory of what was forgotten longer than the
// expiry ago, and with it sets how old a delete or lift must be to be
// old news (blobstore.Store.PruneForgotten). The memory is what a peer
// marked expired resyncs against (keepUnlessForgotten): kept while any
// peer is. Nor is it pruned while this node's clock runs ahead of every
// peer's (everything would look old).
//
// Nor while no peer's clock has been heard lately, if the node has peers
// that answer with one (every node; not an archive): at start, before
// any exchange, or cut off from them, it cannot tell whether its own
// clock is right, and one a year ahead would have pruned the whole
// memory and set the horizon of old news a year ahead, so that every
// delete pushed to it of an ID it holds no record of was acknowledged
// and dropped (TestPruneWaitsForAPeerClock). The prune then waits
// (prunePending, tried every maintenance tick) until one is heard.
func (c *Cluster) pruneForgotten(now time.Time) {
	if c.anyExpired() {
		return
	}
	switch ahead, heard := c.aheadOfPeers(); { // now, not as the last purge saw it
	case heard && ahead > c.opts.MaxClockOffset:
		return
	case !heard && c.hasClockedPeer():
		c.prunePending.Store(true)
		return
	}
	c.prunePending.Store(false)
	if _, err := c.upkeepStore().PruneForgotten(now.Add(-c.opts.TombstoneExpiry)); err != nil {
		c.log.Error("pruning the memory of forgotten deletes", "err", err)
	}
}

// hasClockedPeer reports whether some listed peer is a node (whose
// answers carry its clock), not only archives.
func (c *Cluster) hasClockedPeer() bool {
	for _, r := range c.mem.Load().remotes {
		if !r.Self() && !r.Peer.IsArchive() {
			return true
		}
	}
	return false
}

// scrubLoop starts a scrub pass every ScrubInterval (measured from the last
// finished pass, which survives restarts). A corrupt blob is fetched again
// from a peer at once.
func (c *Cluster) scrubLoop(ctx context.Context) {
	failures := 0
	for {
		var last time.Time
		if v, err := c.upkeepStore().Value(keyLastScrub); err == nil && v != nil {
			if ms, err := strconv.ParseInt(string(v), 10, 64); err == nil {
				last = time.UnixMilli(ms)
			}
		} else if last.IsZero() {
			// First start: count from now rather than scrub at once.
			last = time.Now()
			c.upkeepStore().SetValue(keyLastScrub, []byte(strconv.FormatInt(last.UnixMilli(), 10)))
		}
		if sleep.For(ctx, time.Until(last.Add(c.opts.ScrubInterval))) != nil {
			return
		}
		if err := c.Scrub(ctx); err != nil {
			// A pass that fails is retried with backoff, not at once in
			// a loop (the last finished pass has not moved).
			failures++
			if sleep.For(ctx, min(backoff(failures)*10, c.opts.ScrubInterval)) != nil {
				return
			}
			continue
		}
		failures = 0
	}
}

// Scrub runs one scrub pass now.
func (c *Cluster) Scrub(ctx context.Context) error {
	err := c.upkeepStore().Scrub(ctx, c.opts.ScrubRate, func(st dtfc.State) {
		c.metrics.scrubCorrupt.Inc()
		if c.isCache() {
			return // a cache fetches it again when it is next read
		}
		c.repair(ctx, st)
	})
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("scrub pass failed", "err", err)
		}
		return err
	}
	c.upkeepStore().SetValue(keyLastScrub, []byte(strconv.FormatInt(time.Now().UnixMilli(), 10)))
	p := c.upkeepStore().ScrubProgress()
	c.log.Info("scrub pass finished", "checked", p.Checked, "bytes", p.CheckedBytes, "corrupt", p.Corrupt)
	return nil
}

// goRepair has a blob whose file is missing or corrupt fetched again
// from the peers, in the background (Run's repairLoop).
func (c *Cluster) goRepair(st dtfc.State) {
	if c.isCache() {
		return
	}
	c.repairs.add(st)
}

// repair fetches a blob the scrubber quarantined from the peers.
func (c *Cluster) repair(ctx context.Context, st dtfc.State) {
	// Held locally meanwhile (Open finds it there) counts as repaired.
	b, err := c.Open(ctx, st.ID, OpenOptions{})
	if err == nil {
		err = b.Wait(ctx)
		b.Close()
	}
	if err != nil {
		c.log.Error("repairing a corrupt blob from peers failed; anti-entropy will retry", "id", st.ID.String(), "err", err)
		return
	}
	c.metrics.scrubRepaired.Inc()
	c.log.Info("repaired a corrupt blob from a peer", "id", st.ID.String())
}

// aheadOfPeers returns by how much this node's wall clock is ahead of the
// least-behind peer heard from in the last minutes (their answers' Date
// headers), and whether any was.
func (c *Cluster) aheadOfPeers() (time.Duration, bool) {
	var least time.Duration
	heard := false
	for _, r := range c.mem.Load().remotes {
		if r.Self() {
			continue
		}
		if d, ok := r.skew(); ok && (!heard || d < least) {
			least, heard = d, true
		}
	}
	return least, heard
}

// anyExpired reports whether some listed peer is marked expired.
func (c *Cluster) anyExpired() bool {
	for _, r := range c.mem.Load().remotes {
		if r.isExpired() {
			return true
		}
	}
	return false
}
