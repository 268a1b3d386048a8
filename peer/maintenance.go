package peer

import (
	"context"
	"strconv"
	"time"

	"github.com/dtfc/dtfc"
)

const (
	keyLastContact = "last_contact" // unix ms of the last exchange with a peer
	keyLastScrub   = "last_scrub"   // unix ms of the last finished scrub pass
	contactPersist = time.Minute    // how often last_contact is written, at most
)

func (c *Cluster) loadContact() {
	if v, err := c.store.Value(keyLastContact); err == nil && v != nil {
		if ms, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			c.lastContact = time.UnixMilli(ms)
			c.savedAt = time.Now()
		}
	}
}

// contact records a successful exchange with a peer.
func (c *Cluster) contact() {
	c.syncMu.Lock()
	c.lastContact = time.Now()
	c.syncMu.Unlock()
	c.saveContact(false)
}

func (c *Cluster) contactTime() time.Time {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	return c.lastContact
}

// saveContact persists the last contact at most once a minute (or now,
// with force): its only use is telling, after a long absence, that the
// node must resync, so a minute's imprecision is harmless.
func (c *Cluster) saveContact(force bool) {
	c.syncMu.Lock()
	// A stale persisted value makes a returning node resync sooner (safe),
	// but one older than the states it pushed since could let it keep a
	// state the cluster deleted: persist well within the retention.
	every := min(contactPersist, c.opts.TombstoneRetention/4)
	t, due := c.lastContact, force || time.Since(c.savedAt) >= every
	if due && !t.IsZero() {
		c.savedAt = time.Now()
	}
	c.syncMu.Unlock()
	if !due || t.IsZero() {
		return
	}
	if err := c.store.SetValue(keyLastContact, []byte(strconv.FormatInt(t.UnixMilli(), 10))); err != nil {
		c.log.Warn("persisting the last contact time", "err", err)
	}
}

// checkStale reports whether this node has been out of touch with the
// cluster for longer than the tombstone retention (deletes it missed may
// have been forgotten by the others), and enters resync mode if so. A node
// that never had contact is new, not stale.
func (c *Cluster) checkStale() bool {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if c.resyncing {
		return true
	}
	if c.lastContact.IsZero() || time.Since(c.lastContact) <= c.opts.TombstoneRetention {
		return false
	}
	if len(c.mem.Load().remotes) == 0 {
		return false
	}
	c.resyncing = true
	c.log.Warn("out of touch with the cluster for longer than the tombstone retention: resyncing before offering any state",
		"last_contact", c.lastContact, "retention", c.opts.TombstoneRetention)
	return true
}

func (c *Cluster) isResyncing() bool {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	return c.resyncing
}

// holdPushes tells pushers to wait while the node resyncs.
func (c *Cluster) holdPushes() bool { return c.checkStale() }

func (c *Cluster) setSynced() {
	c.syncMu.Lock()
	c.synced = true
	c.syncMu.Unlock()
}

// isSynced reports whether this node has completed anti-entropy with its
// replica peers and is not resyncing: only then may others trust its lack
// of a record as "deleted and forgotten".
func (c *Cluster) isSynced() bool {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	return c.synced && !c.resyncing
}

// maintenanceLoop expires tombstones older than the retention, and for a
// cache persists its read order and keeps it under its size.
func (c *Cluster) maintenanceLoop(ctx context.Context) {
	purgeEvery := min(max(c.opts.TombstoneRetention/10, time.Second), time.Hour)
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
			horizon := dtfc.TimestampAt(c.opts.Wall().Add(-c.opts.TombstoneRetention))
			if n, err := c.store.PurgeTombstones(horizon, func(uint64, dtfc.Timestamp) bool { return true }); err != nil {
				c.log.Error("expiring tombstones", "err", err)
			} else if n > 0 {
				c.metrics.tombstonesPurged.Add(float64(n))
				c.log.Info("expired tombstones older than the retention", "count", n)
			}
			if _, err := c.store.PurgeLifts(horizon, func(uint64, dtfc.Timestamp) bool { return true }); err != nil {
				c.log.Error("expiring lifted blocks", "err", err)
			}
		}
		if c.isCache() {
			if err := c.store.FlushAccess(); err != nil {
				c.log.Warn("persisting the cache's read order", "err", err)
			}
			c.evict(0)
		}
		c.saveContact(false)
	}
}

// scrubLoop starts a scrub pass every ScrubInterval (measured from the last
// finished pass, which survives restarts). A corrupt blob is fetched again
// from a peer at once.
func (c *Cluster) scrubLoop(ctx context.Context) {
	for {
		var last time.Time
		if v, err := c.store.Value(keyLastScrub); err == nil && v != nil {
			if ms, err := strconv.ParseInt(string(v), 10, 64); err == nil {
				last = time.UnixMilli(ms)
			}
		} else if last.IsZero() {
			// First start: count from now rather than scrub at once.
			last = time.Now()
			c.store.SetValue(keyLastScrub, []byte(strconv.FormatInt(last.UnixMilli(), 10)))
		}
		if !sleepCtx(ctx, time.Until(last.Add(c.opts.ScrubInterval))) {
			return
		}
		c.Scrub(ctx)
	}
}

// Scrub runs one scrub pass now.
func (c *Cluster) Scrub(ctx context.Context) error {
	err := c.store.Scrub(ctx, c.opts.ScrubRate, func(st dtfc.State) {
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
	c.store.SetValue(keyLastScrub, []byte(strconv.FormatInt(time.Now().UnixMilli(), 10)))
	p := c.store.ScrubProgress()
	c.log.Info("scrub pass finished", "checked", p.Checked, "bytes", p.CheckedBytes, "corrupt", p.Corrupt)
	return nil
}

// repair fetches a blob the scrubber quarantined from the peers.
func (c *Cluster) repair(ctx context.Context, st dtfc.State) {
	d, err := c.Fetch(ctx, st.ID)
	if err == nil {
		err = d.Wait(ctx)
		d.Close()
	}
	if err != nil && err != ErrHeldLocally {
		c.log.Error("repairing a corrupt blob from peers failed; anti-entropy will retry", "id", st.ID.String(), "err", err)
		return
	}
	c.metrics.scrubRepaired.Inc()
	c.log.Info("repaired a corrupt blob from a peer", "id", st.ID.String())
}
