package peer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

const (
	pushBatch       = 256 // changes offered per request
	pushParallelism = 16  // blob bodies sent at once to one peer
)

// pusher sends the local change feed to one peer: every change after the
// peer's acknowledged cursor, uploads with their bytes if the peer wants
// them, deletes as tombstones (a cache gets deletes only). The cursor is
// persisted after the peer accepted a batch, so a crash may resend a
// change but never skips one.
type pusher struct {
	c      *Cluster
	r      *remote
	cancel context.CancelFunc
	cursor atomic.Uint64
	loaded atomic.Bool
	// caughtUp is when the pusher last found nothing to send.
	caughtUp atomic.Pointer[time.Time]
}

func cursorKey(url string) string { return "cursor " + url }

// storedCursor reads a peer's persisted cursor.
func (c *Cluster) storedCursor(url string) uint64 {
	v, err := c.store.Value(cursorKey(url))
	if err != nil || v == nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(v), 10, 64)
	return n
}

// cursorOf returns the sequence number up to which the peer has accepted
// the feed.
func (c *Cluster) cursorOf(url string) uint64 {
	c.mu.Lock()
	p := c.pushers[url]
	c.mu.Unlock()
	if p != nil && p.loaded.Load() {
		return p.cursor.Load()
	}
	return c.storedCursor(url)
}

// queue counts the operations the peer has not accepted yet, and how long
// the pusher has been behind (since it last had nothing to send).
func (c *Cluster) queue(r *remote) (int64, time.Duration) {
	n, err := c.store.CountChanges(c.cursorOf(r.URL), r.IsCache())
	if err != nil || n == 0 {
		return n, 0
	}
	c.mu.Lock()
	p := c.pushers[r.URL]
	c.mu.Unlock()
	if p == nil {
		return n, 0
	}
	if t := p.caughtUp.Load(); t != nil {
		return n, time.Since(*t)
	}
	return n, 0
}

func (p *pusher) run(ctx context.Context) {
	c, r := p.c, p.r
	cursor := c.storedCursor(r.URL)
	p.cursor.Store(cursor)
	start := time.Now()
	p.caughtUp.Store(&start)
	p.loaded.Store(true)
	failures := 0
	for ctx.Err() == nil {
		if c.holdPushes() {
			// Away longer than the tombstone retention: offering old
			// states could resurrect deletes the others have forgotten.
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		changed := c.store.Changed()
		if failures > 0 {
			// A retry starts: the peer's answers to it must not wake
			// the pusher for another one at once.
			r.pushFailed()
		}
		changes, err := c.store.Changes(cursor, pushBatch)
		if err != nil {
			c.log.Error("reading the change feed", "err", err)
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		if len(changes) == 0 {
			now := time.Now()
			p.caughtUp.Store(&now)
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
			continue
		}
		var send []dtfc.State
		var deny []blobstore.Deny
		for _, ch := range changes {
			switch {
			case ch.Deny != nil:
				deny = append(deny, *ch.Deny)
			case !r.IsCache() || ch.State.Deleted:
				send = append(send, ch.State)
			}
		}
		if len(send) > 0 || len(deny) > 0 {
			err := c.pushDeny(ctx, r, deny)
			if err == nil {
				err = p.push(ctx, send)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				r.pushFailed()
				d := backoff(failures)
				if failures == 1 {
					c.log.Warn("push to peer failed; retrying with backoff", "peer", r.URL, "err", err)
				} else {
					c.log.Debug("push to peer failed", "peer", r.URL, "err", err, "retry_in", d)
				}
				if !p.backoff(ctx, failures) {
					return
				}
				continue
			}
			if failures > 0 {
				c.log.Info("peer accepts pushes again", "peer", r.URL)
				r.pushOK()
			}
			failures = 0
		}
		cursor = changes[len(changes)-1].Seq
		if err := c.store.SetValue(cursorKey(r.URL), []byte(strconv.FormatUint(cursor, 10))); err != nil {
			c.log.Error("persisting a replication cursor", "peer", r.URL, "err", err)
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		p.cursor.Store(cursor)
		c.acked()
		c.contact()
	}
}

// backoff waits before the next attempt (or until the peer shows signs of
// life); false means ctx ended.
func (p *pusher) backoff(ctx context.Context, failures int) bool {
	t := time.NewTimer(backoff(failures))
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.r.kick:
	case <-ctx.Done():
		return false
	}
	return true
}

// pushDeny sends deny entries of the feed; the peer applies what is
// newer, and what changes its list flows on from there.
func (c *Cluster) pushDeny(ctx context.Context, r *remote, list []blobstore.Deny) error {
	if len(list) == 0 {
		return nil
	}
	var ans denyAnswer
	return r.callJSON(ctx, http.MethodPost, "/deny", denyRequest{Entries: list}, &ans)
}

type denyRequest struct {
	Entries []blobstore.Deny `json:"entries"`
}

type denyAnswer struct {
	Applied int    `json:"applied"`
	Digest  string `json:"digest"`
}

type changesRequest struct {
	Changes []dtfc.State `json:"changes"`
}

type changesAnswer struct {
	// Results has one entry per change: "ok" (applied, or older than what
	// the peer has) or "need" (send the bytes).
	Results []string `json:"results"`
}

// push offers states to the peer and sends the bytes it asks for.
func (p *pusher) push(ctx context.Context, states []dtfc.State) error {
	if len(states) == 0 {
		return nil
	}
	var ans changesAnswer
	if err := p.r.callJSON(ctx, http.MethodPost, "/changes", changesRequest{Changes: states}, &ans); err != nil {
		return err
	}
	if len(ans.Results) != len(states) {
		return fmt.Errorf("peer %s answered %d results for %d changes", p.r.URL, len(ans.Results), len(states))
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pushParallelism)
	for i, res := range ans.Results {
		switch res {
		case "ok":
			p.c.metrics.pushed.WithLabelValues(kindOf(states[i])).Inc()
		case "need":
			st := states[i]
			g.Go(func() error { return p.c.sendBlob(gctx, p.r, st) })
		default:
			return fmt.Errorf("peer %s: unknown result %q", p.r.URL, res)
		}
	}
	return g.Wait()
}

func kindOf(st dtfc.State) string {
	if st.Deleted {
		return "delete"
	}
	return "upload"
}

// sendBlob sends a blob's bytes with its state. If the blob is gone
// meanwhile, its newer state is later in the feed and nothing is sent.
func (c *Cluster) sendBlob(ctx context.Context, r *remote, st dtfc.State) error {
	b, err := c.store.Open(st.ID)
	if errors.Is(err, blobstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer b.Close()
	hdr := http.Header{}
	hdr.Set(HeaderState, encodeStateHeader(b.State))
	hdr.Set("Content-Type", "application/octet-stream")
	body := &sizedReader{r: b.File, n: b.State.Size}
	resp, err := r.do(ctx, http.MethodPut, "/blobs/"+st.ID.String(), body, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return answerErr(r.URL, resp)
	}
	c.metrics.pushed.WithLabelValues("upload").Inc()
	c.metrics.pushedBytes.Add(float64(b.State.Size))
	return nil
}

// sizedReader lets net/http send a Content-Length for a file body.
type sizedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (s *sizedReader) Read(p []byte) (int, error) { return s.r.Read(p) }

// Len is what http.NewRequest looks for... it only knows a few types, so
// do() sets ContentLength from it.
func (s *sizedReader) Len() int64 { return s.n }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
