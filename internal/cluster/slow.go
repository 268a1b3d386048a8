package cluster

import (
	"context"
	"io"
	"net/http"
	"time"
)

// Delay and Throttle slow a link down like Latency and Bandwidth, but in
// the link's corrupting proxy rather than in toxiproxy. Toxiproxy v2.12.0
// can deadlock when a toxic is removed while a connection of its link
// has just died with data queued in the toxic (Shopify/toxiproxy#558):
// the toxic blocks forever handing the data to a writer that is gone,
// while holding the lock every new connection of the proxy needs, so the
// call that removes it never returns and the link stops carrying
// anything. A node restarted while its links are slowed does exactly
// that. These two keep toxiproxy's chain untouched (only Cut uses it).

// Delay holds every exchange on the link from -> to by d in each
// direction: a request is forwarded d after it arrived, its answer
// passed back d after it came (so an exchange takes at least 2d longer).
// Zero removes the delay; exchanges already waiting finish their wait.
func (c *Cluster) Delay(from, to int, d time.Duration) {
	c.t.Helper()
	c.link(from, to).corr.delay.Store(int64(max(d, 0)))
}

// Throttle limits every body crossing the link from -> to (requests and
// answers, each on its own) to kbPerSec kilobytes (1000 bytes) per
// second. Zero removes the limit, also for the bodies in flight.
func (c *Cluster) Throttle(from, to int, kbPerSec int64) {
	c.t.Helper()
	c.link(from, to).corr.rate.Store(max(kbPerSec, 0) * 1000)
}

// unslow removes Delay and Throttle (Heal and HealAll do).
func (c *corruptor) unslow() {
	c.delay.Store(0)
	c.rate.Store(0)
}

// slow applies the link's delay now and wraps *body so that it flows no
// faster than the link's rate (looked up on every read).
func (c *corruptor) slow(ctx context.Context, body *io.ReadCloser) {
	if d := time.Duration(c.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		case <-c.closing:
			t.Stop()
		}
	}
	if *body != nil && *body != http.NoBody {
		*body = &throttleReader{rc: *body, rate: c.rate.Load}
	}
}

// throttleReader passes a body on at no more than rate() bytes per second,
// on average since the rate was set (so the time its reads take counts
// in it), with no credit for more than throttleSlack of idleness.
// Once its body said EOF it says EOF without reading it again: the HTTP
// server closes a request body it saw the end of as soon as the proxy
// answers, and the transport's last read (after the sleep that delivered
// the last bytes) must not then fail and cut the upstream connection.
type throttleReader struct {
	rc   io.ReadCloser
	rate func() int64
	eof  bool

	// The bytes passed since start, at the rate last seen.
	start    time.Time
	passed   int64
	lastRate int64
}

// throttleSlack is how far behind its rate a throttled body may fall
// (a reader that paused) and make it up at full speed.
const throttleSlack = 50 * time.Millisecond

func (r *throttleReader) Read(p []byte) (int, error) {
	rate := r.rate()
	if rate > 0 && int64(len(p)) > rate/20 {
		p = p[:max(rate/20, 1)] // at most 50 ms worth at a time
	}
	if r.eof {
		return 0, io.EOF
	}
	if rate != r.lastRate || time.Since(r.due()) > throttleSlack {
		r.start, r.passed, r.lastRate = time.Now(), 0, rate
	}
	n, err := r.rc.Read(p)
	r.eof = err == io.EOF
	if rate > 0 && n > 0 {
		r.passed += int64(n)
		time.Sleep(time.Until(r.due()))
	}
	return n, err
}

// due is when the bytes passed are due at the rate.
func (r *throttleReader) due() time.Time {
	if r.lastRate <= 0 {
		return r.start
	}
	return r.start.Add(time.Duration(float64(r.passed) / float64(r.lastRate) * float64(time.Second)))
}

func (r *throttleReader) Close() error { return r.rc.Close() }
