package peer

import (
	"context"
	"sync"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/broadcast"
)

// pushers are the running pushers, one per listed peer, by URL. Only
// Run's pusherLoop starts and stops them, under its own context; the
// rest of the node only looks one up (for its cursor and how long it has
// been behind).
type pushers struct {
	mu sync.Mutex
	m  map[string]*pusher
}

// get returns the pusher of the peer at url, or nil.
func (ps *pushers) get(url string) *pusher {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.m[url]
}

// state is what the pusher of r is doing (api.PeerStatus.Pusher): "" for
// this node itself, "stopped" when no pusher of r runs (Run has not
// started, or r's entry is not the one its pusher was started for).
func (ps *pushers) state(r *remote) string {
	if r.Self() {
		return ""
	}
	p := ps.get(r.URL)
	if p == nil || p.r != r {
		return "stopped"
	}
	if s := p.state.Load(); s != nil {
		return *s
	}
	return "starting"
}

// lastError is why the pusher to r last failed, while it has not
// succeeded since ("" if it has, or none runs).
func (ps *pushers) lastError(r *remote) string {
	if p := ps.get(r.URL); p != nil && p.r == r {
		if e := p.lastErr.Load(); e != nil {
			return *e
		}
	}
	return ""
}

// follow starts a pusher (start, under a context of ctx's that cancel
// ends) for each remote of m that has none, and stops those of remotes
// no longer listed (or listed anew: another role).
func (ps *pushers) follow(ctx context.Context, m *membership, start func(ctx context.Context, r *remote, cancel context.CancelFunc, after <-chan struct{}) *pusher) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.m == nil {
		ps.m = map[string]*pusher{}
	}
	stopped := map[string]*pusher{}
	for url, p := range ps.m {
		if r := m.byURL[url]; r == nil || r != p.r {
			p.cancel()
			delete(ps.m, url)
			stopped[url] = p
		}
	}
	for _, r := range m.remotes {
		if ps.m[r.URL] != nil {
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		// The new pusher of a URL reads its cursor only once the old
		// one's run has returned: a round of the old one ending late
		// wrote the cursor past the new one's rewind
		// (TestReplacedPusherWaitsForTheOld).
		var after <-chan struct{}
		if old := stopped[r.URL]; old != nil {
			after = old.done
		}
		ps.m[r.URL] = start(pctx, r, cancel, after)
	}
}

// pusherLoop keeps a pusher running for each listed peer, following the
// peer list (setPeers signals peersChanged), until ctx ends.
func (c *Cluster) pusherLoop(ctx context.Context) {
	for {
		changed := c.peersChanged.Wait()
		c.pushers.follow(ctx, c.mem.Load(), func(ctx context.Context, r *remote, cancel context.CancelFunc, after <-chan struct{}) *pusher {
			p := newPusher(c, r, cancel)
			p.after = after
			c.goLoop(ctx, p.run)
			return p
		})
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// repairs are the blobs found missing or corrupt on disk (by the
// scrubber, or by a read), waiting for Run's repairLoop to fetch them
// again from the peers. A blob found before Run starts waits for it.
type repairs struct {
	mu    sync.Mutex
	queue []dtfc.State
	added broadcast.Signal
}

func (q *repairs) add(st dtfc.State) {
	q.mu.Lock()
	q.queue = append(q.queue, st)
	q.mu.Unlock()
	q.added.Notify()
}

func (q *repairs) take() []dtfc.State {
	q.mu.Lock()
	defer q.mu.Unlock()
	list := q.queue
	q.queue = nil
	return list
}

// repairLoop fetches each blob added to c.repairs from the peers, each in
// its own goroutine, until ctx ends.
func (c *Cluster) repairLoop(ctx context.Context) {
	for {
		added := c.repairs.added.Wait()
		for _, st := range c.repairs.take() {
			c.goLoop(ctx, func(ctx context.Context) { c.repair(ctx, st) })
		}
		select {
		case <-ctx.Done():
			return
		case <-added:
		}
	}
}
