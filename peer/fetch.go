package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/broadcast"
)

var (
	// ErrNotFound means no reachable peer holds the ID.
	ErrNotFound = errors.New("no reachable peer holds it")
	// ErrBusy means too many transfers from peers are running; retry.
	ErrBusy = errors.New("too many transfers from peers in flight; retry shortly")
	// ErrEvictedUnreachable: this tier evicted the blob's bytes to its
	// archive, and neither the archive nor a peer could send them now.
	ErrEvictedUnreachable = errors.New("this node keeps the file in its archive (evicted under max_bytes), and neither the archive nor a peer could send it now; retry later")
)

// blobSource hands out a peer's own copy of a blob (the fetcher,
// anti-entropy's pulls).
type blobSource interface {
	// Open opens the peer's copy of id from byte off on (0: all of it)
	// with its state, checked to be a present state of id whose size less
	// off is the body's.
	Open(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, dtfc.State, error)
}

// slotWait is how long a miss waits for a free transfer slot.
const slotWait = 5 * time.Second

// fetcher runs transfers from peers. It keeps at most one transfer per ID:
// x/sync/singleflight would hand every waiter the finished result, but
// here every waiter must read the stream while it arrives (the first byte
// must not wait for the last), so waiters attach to the transfer itself.
type fetcher struct {
	store fetchStore
	// candidates are the peers to ask for an ID, best first.
	candidates func(dtfc.ID) []*remote
	// distrusts reports a peer nothing is to be taken from (marked
	// expired, here or elsewhere): never asked first for a pull either.
	distrusts func(*remote) bool
	// toFeed: fills enter the change feed (a replica's; a cache's fills
	// are nobody's news).
	toFeed bool
	// evict, on a cache or a tier (nil on a replica), makes room for incoming
	// bytes (0: just keep under max_bytes).
	evict    func(incoming int64) (int, error)
	log      *slog.Logger
	metrics  *metrics
	sources  int // holders a transfer in pieces takes them from at once
	mu       sync.Mutex
	inflight map[dtfc.ID]*transfer
	gen      uint64 // transfers ended (generation)
	// stopped: Run ended; every transfer was cut off, and one started
	// now is cut off at once.
	stopped bool
	wg      sync.WaitGroup
	slots   chan struct{} // one token per running transfer
	// reserved is the size of the transfers in flight into a cache: each
	// fill makes room for the others' bytes too, so concurrent fills do
	// not together overshoot max_bytes. A fill's reservation ends just
	// before its commit adds its bytes to the store's count (so nothing is
	// counted twice and evicted for nothing); the eviction after the
	// commit trims what a fill in that moment did not see.
	reserved atomic.Int64
}

// fetchStore is what the fetcher needs of the blob store: the local
// state, and a writer for what arrives.
type fetchStore interface {
	Stat(id dtfc.ID) (dtfc.State, error)
	NewWriter(opts blobstore.WriterOptions) (*blobstore.Writer, error)
	NewResumableWriter(id dtfc.ID, size int64, opts blobstore.WriterOptions) (*blobstore.Writer, error)
	PartialSize(id dtfc.ID) (n, size int64)
}

func newFetcher(c *Cluster, maxFetches, sources int) *fetcher {
	f := &fetcher{store: c.store, candidates: c.candidates, distrusts: c.distrusts, log: c.log, metrics: c.metrics, sources: sources,
		inflight: map[dtfc.ID]*transfer{}, slots: make(chan struct{}, maxFetches)}
	if c.isCache() || c.isTier() {
		f.evict = c.evict
	}
	f.toFeed = !c.isCache()
	return f
}

// stop cuts off every transfer, and any started later (a transfer
// started before Run is cut off with the rest).
func (f *fetcher) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	for _, t := range f.inflight {
		t.cancel()
	}
}

// transfer is one blob coming from a peer into a temp file, readable by
// any number of downloads while it arrives.
type transfer struct {
	id    dtfc.ID
	ready chan struct{} // closed once st/w are set, or startErr
	// cancel cuts the transfer off: its context is detached from the
	// clients that wait for it, and ends only at the fetcher's stop.
	cancel context.CancelFunc
	// Set before ready is closed:
	startErr error
	st       dtfc.State
	src      string
	w        *blobstore.Writer

	mu       sync.Mutex
	written  int64
	changed  broadcast.Signal // notified at every progress
	verified bool             // every byte is written and hashed to the ID
	finished bool
	result   error // after finished: nil if verified and committed
	refs     int

	// Set at the start: the peer to ask first (an anti-entropy pull's);
	// whether a client's miss started it (it holds a slot, and counts in
	// dtfc_peer_fetches_total).
	prefer *remote
	miss   bool
	// check, on a transfer started by a recheck (pieces.go), is what it
	// compares its bytes with; it goes from one holder.
	check *check
}

func (t *transfer) progress(n int64) {
	t.mu.Lock()
	t.written = n
	t.mu.Unlock()
	t.changed.Notify()
}

// verify marks the bytes as good: readers may take the last byte while the
// blob is made durable.
func (t *transfer) verify() {
	t.mu.Lock()
	t.verified = true
	t.mu.Unlock()
	t.changed.Notify()
}

func (t *transfer) finish(err error) {
	t.mu.Lock()
	t.finished, t.result = true, err
	t.mu.Unlock()
	t.changed.Notify()
}

// release drops a reference; the last one closes the temp file (whose name
// the commit has already moved into place, or which is removed).
func (t *transfer) release() {
	t.mu.Lock()
	t.refs--
	last := t.refs == 0
	t.mu.Unlock()
	if last && t.w != nil {
		t.w.Close()
	}
}

// generation counts the transfers that have ended. Open reads it before
// it looks for id locally: if no transfer ended between that look and
// the start of a transfer, none committed id meanwhile, so a blob absent
// both locally and from inflight is truly missing — and no disk is read
// under f.mu.
func (f *fetcher) generation() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}

// open returns id from peers after a local miss seen at generation gen.
// Concurrent calls for one ID share one transfer. If transfers ended
// since gen, local is asked again (the blob may have arrived) before a
// transfer starts.
func (f *fetcher) open(ctx context.Context, id dtfc.ID, gen uint64, local func() (*Blob, error)) (*Blob, error) {
	if d, err := f.attach(ctx, id); d != nil || err != nil {
		return d, err
	}
	// A new transfer needs a slot; waiting for one holds no lock.
	timer := time.NewTimer(slotWait)
	defer timer.Stop()
	select {
	case f.slots <- struct{}{}:
	case <-timer.C:
		return nil, ErrBusy
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		f.mu.Lock()
		if t := f.inflight[id]; t != nil {
			<-f.slots // someone else's transfer: give the slot back
			return f.join(ctx, t)
		}
		if f.gen == gen {
			return f.join(ctx, f.start(id, nil, nil))
		}
		gen = f.gen
		f.mu.Unlock()
		// A transfer ended since the local miss: look again, holding the
		// slot but no lock.
		if b, err := local(); err != blobstore.ErrNotFound {
			<-f.slots
			return b, err
		}
	}
}

// attach joins a transfer of id already running, if any.
func (f *fetcher) attach(ctx context.Context, id dtfc.ID) (*Blob, error) {
	f.mu.Lock()
	t := f.inflight[id]
	if t == nil {
		f.mu.Unlock()
		return nil, nil
	}
	return f.join(ctx, t)
}

// join takes a reference to t, unlocks f.mu and waits for t's headers.
func (f *fetcher) join(ctx context.Context, t *transfer) (*Blob, error) {
	t.mu.Lock()
	t.refs++
	t.mu.Unlock()
	f.mu.Unlock()
	return f.wait(ctx, t)
}

// start begins a transfer of id, with f.mu held: for a client's miss
// (prefer nil), holding a slot it releases when it ends; for a pull or a
// recheck (ck), asking prefer first.
func (f *fetcher) start(id dtfc.ID, prefer *remote, ck *check) *transfer {
	tctx := context.Background()
	if prefer != nil {
		// Repair, not a read: the source keeps its eviction order.
		tctx = context.WithValue(tctx, repairFetchKey{}, true)
	}
	tctx, cancel := context.WithCancel(tctx)
	t := &transfer{id: id, ready: make(chan struct{}), refs: 1, cancel: cancel, prefer: prefer, miss: prefer == nil, check: ck}
	if f.stopped {
		cancel()
	}
	f.inflight[id] = t
	f.wg.Add(1)
	go f.run(tctx, t)
	return t
}

// pull brings id's bytes from the peers, r first, for anti-entropy, and
// waits for them to be stored. It joins the transfer of id in flight if
// there is one (a client's miss, another pull) instead of starting a
// second, and takes no slot: a catch-up leaves the misses theirs. held
// tells whether the bytes are here now; as in open, a transfer that ended
// since the look makes it look again.
func (f *fetcher) pull(ctx context.Context, id dtfc.ID, r *remote, held func() bool) error {
	gen := f.generation()
	if held() {
		return nil
	}
	for {
		f.mu.Lock()
		t := f.inflight[id]
		if t == nil && f.gen == gen {
			t = f.start(id, r, nil)
		}
		if t != nil {
			t.mu.Lock()
			t.refs++
			t.mu.Unlock()
			f.mu.Unlock()
			defer t.release()
			return t.wait(ctx)
		}
		gen = f.gen
		f.mu.Unlock()
		if held() {
			return nil
		}
	}
}

// wait waits for t's end and returns its result: nil if the blob was
// verified and stored.
func (t *transfer) wait(ctx context.Context) error {
	select {
	case <-t.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if t.startErr != nil {
		return t.startErr
	}
	for {
		ch := t.changed.Wait()
		t.mu.Lock()
		fin, res := t.finished, t.result
		t.mu.Unlock()
		if fin {
			return res
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// wait waits for a transfer's headers and returns a Blob reading it.
func (f *fetcher) wait(ctx context.Context, t *transfer) (*Blob, error) {
	select {
	case <-t.ready:
	case <-ctx.Done():
		t.release()
		return nil, ctx.Err()
	}
	if t.startErr != nil {
		t.release()
		return nil, t.startErr
	}
	return fromPeer(&download{t: t, ctx: ctx}), nil
}

// run finds a peer holding the blob and streams it into the store.
func (f *fetcher) run(ctx context.Context, t *transfer) {
	defer f.wg.Done()
	if t.miss {
		defer func() { <-f.slots }()
	}
	defer t.release()
	defer f.leave(t)
	defer t.cancel()

	local, lerr := f.store.Stat(t.id)
	var off int64
	if t.check == nil {
		// A recheck starts from byte 0: bytes kept from before may be
		// those that failed.
		off, _ = f.store.PartialSize(t.id) // kept by an earlier transfer that was cut
	}
	// With other holders to take pieces from, the first request asks for
	// the first piece only, so that none is closed half read.
	length := int64(-1)
	if f.sources > 1 && t.check == nil && len(f.piecesFrom(t.id, nil, 2, true)) > 1 {
		length = pieceSize
	}
	var errs []error
	first := t.prefer
	if first != nil && f.distrusts != nil && f.distrusts(first) {
		first = nil // marked expired since the pull began
	}
	for _, r := range preferred(f.candidates(t.id), first) {
		body, st, at, err := f.ask(ctx, r, t.id, off, length, local, lerr == nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.fill(ctx, t, r, body, st, at, bodyEnd(at, length, st.Size))
		return
	}
	f.count(t, "notfound")
	t.startErr = fmt.Errorf("%w (%w)", ErrNotFound, errors.Join(errs...))
	if len(errs) == 0 {
		t.startErr = ErrNotFound
	}
	close(t.ready)
}

// ask opens r's copy of id from byte off on (from 0 if r cannot send
// that range), length bytes of it if r can send pieces (-1: all), unless the local record wins: it does unless the peer's
// state is newer — or is the very same upload whose local file is
// missing (a record without its bytes is repaired by a read). It returns
// where the body starts.
func (f *fetcher) ask(ctx context.Context, r *remote, id dtfc.ID, off, length int64, local dtfc.State, hasLocal bool) (io.ReadCloser, dtfc.State, int64, error) {
	open := r.node.Open
	if ps, ok := r.node.(pieceSource); ok && length >= 0 {
		open = func(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, dtfc.State, error) {
			return ps.OpenPiece(ctx, id, off, length)
		}
	} else {
		length = -1
	}
	body, st, err := open(ctx, id, off)
	if err != nil && off > 0 && !errors.Is(err, errPeerNotFound) && ctx.Err() == nil {
		off = 0
		body, st, err = open(ctx, id, 0)
	}
	if err != nil {
		return nil, st, 0, err
	}
	if hasLocal && !st.Newer(local) && !(st == local && !local.Deleted) {
		// Our tombstone is newer than the peer's copy: it is deleted.
		body.Close()
		return nil, st, 0, fmt.Errorf("peer %s: %w", r.URL, errPeerNotFound)
	}
	return body, st, off, nil
}

const (
	// resumeMin is the size from which a transfer from a peer keeps what
	// it received when it is cut, and continues from there (see
	// blobstore/partial.go); a smaller one starts over.
	resumeMin = 4 << 20
	// checkpointEvery is how many bytes a resumable transfer receives
	// between checkpoints: what a crash of this node can make it fetch
	// again.
	checkpointEvery = 32 << 20
	// maxResumes is how many times in a row a cut transfer is continued
	// without a byte of progress before it fails (its bytes are kept for
	// the next one).
	maxResumes = 3
)

// fill streams body, r's copy of the blob of st from byte at to end, into
// the store through t, from several holders if it is large (pieces.go), readable while it arrives, and records how it went. A
// large blob's transfer that is cut goes on from where it stopped, from
// another holder or the same one; if it cannot, what it verified is kept
// for the next transfer of the ID, also after a restart.
func (f *fetcher) fill(ctx context.Context, t *transfer, r *remote, body io.ReadCloser, st dtfc.State, at, end int64) {
	cache := f.evict != nil
	release := func() {}
	if cache {
		reserved := f.reserved.Add(st.Size)
		var once sync.Once
		release = func() { once.Do(func() { f.reserved.Add(-st.Size) }) }
		defer release()
		if _, err := f.evict(reserved); err != nil {
			f.log.Warn("eviction failed", "err", err)
		}
	}
	// In pieces only if the first request asked for one (else what a
	// worker leaves of that body would be sent for nothing).
	pieces := end < st.Size && f.inPieces(t, r, st, at)
	if !pieces && end < st.Size {
		body = &continued{ctx: ctx, r: r, id: st.ID, size: st.Size, body: body, pos: at, end: end}
		end = st.Size
	}
	w, body, err := f.writer(ctx, t, r, body, st, at)
	if err != nil {
		t.startErr = err
		close(t.ready)
		return
	}
	t.st, t.src, t.w = st, r.URL, w
	close(t.ready)
	start := time.Now()
	// Bytes kept from an earlier try (partial/): from whichever holders
	// sent them then. They hash as their checkpoint says, but a liar's
	// piece among them is found only at the end, and not r's doing.
	kept := w.Size()
	sources := map[*remote]bool{r: true}
	var spans []span
	if pieces {
		if w.Size() != at {
			end = st.Size // f.writer asked for the rest
		}
		err, spans = f.copyPieces(ctx, w, r, body, end, st)
		for _, sp := range spans {
			sources[sp.from] = true
		}
	} else {
		err, r = f.copyOne(ctx, t, w, r, body, st, sources)
	}
	if err == nil && w.Size() == st.Size && w.Sum() == st.ID {
		t.verify()
	}
	if err == nil {
		release()
		_, err = w.CommitState(st, f.toFeed)
	}
	switch {
	case err == nil:
		f.count(t, "ok")
		if t.miss {
			f.metrics.fetchBytes.Add(float64(st.Size))
		}
		if t.check != nil {
			f.blame(w, t.check)
		}
		f.log.Debug("fetched from peer", "id", t.id.String(), "peer", r.URL, "sources", len(sources), "bytes", st.Size, "took", time.Since(start))
	case errors.Is(err, blobstore.ErrDigestMismatch):
		f.count(t, "corrupt")
		ck := t.check
		if len(sources) == 1 && kept == 0 {
			d := r.fail(fmt.Errorf("sent bytes for %s that do not match its SHA-512", t.id))
			f.log.Warn("peer sent corrupt bytes; transfer aborted, peer skipped", "id", t.id.String(), "peer", r.URL, "retry_in", d)
			if ck != nil {
				f.metrics.corruptSources.WithLabelValues(r.URL).Inc()
			}
		} else {
			ck = &check{spans: spans, tried: map[*remote]bool{}}
		}
		if ck != nil && f.recheck(t, ck) {
			f.log.Warn("bytes from several peers do not match their SHA-512; fetching the blob again from one to find which sent wrong bytes",
				"id", t.id.String(), "peers", len(sources), "kept_from_an_earlier_try", kept)
		} else if len(sources) > 1 || kept > 0 {
			f.log.Warn("bytes from several peers do not match their SHA-512; transfer aborted", "id", t.id.String(), "peers", len(sources))
		}
	default:
		f.count(t, "failed")
		if ctx.Err() == nil && !pieces { // in pieces, each holder was told already
			r.fail(err)
		}
		if serr := w.Suspend(); serr != nil {
			f.log.Warn("could not keep a cut transfer", "id", t.id.String(), "err", serr)
		}
		f.log.Warn("fetch from peer failed", "id", t.id.String(), "peer", r.URL, "err", err, "kept", w.Size())
	}
	if err == nil && cache {
		f.evict(0)
	}
	f.leave(t)
	t.finish(err)
}

// copyOne copies body, r's copy of st's blob from w's Size on, into w,
// and goes on from another holder (or r again) where a cut stopped it,
// for a large blob. It returns how it ended and the holder it ended with,
// and adds each holder it read to sources.
func (f *fetcher) copyOne(ctx context.Context, t *transfer, w *blobstore.Writer, r *remote, body io.ReadCloser, st dtfc.State, sources map[*remote]bool) (error, *remote) {
	from := w.Size()
	fails := 0
	for {
		err, cut := copyInto(w, body, st.Size)
		body.Close()
		if !cut || !w.Resumable() || ctx.Err() != nil {
			return err, r
		}
		r.fail(err)
		if w.Size() > from {
			fails = 0 // it moved: only cuts without progress add up
		}
		if fails++; fails > maxResumes {
			return err, r
		}
		next, nbody, rerr := f.resume(ctx, t.id, st, w.Size(), r)
		if rerr != nil {
			return errors.Join(err, rerr), r
		}
		f.log.Info("transfer from peer cut; continuing", "id", t.id.String(), "peer", r.URL, "err", err,
			"at", w.Size(), "size", st.Size, "from", next.URL)
		f.metrics.fetchResumes.Inc()
		r, body, from = next, nbody, w.Size()
		sources[r] = true
	}
}

// writer opens the store's writer for st's transfer, resumable for a
// large blob, and lines body (from byte at) up with it: a writer that
// resumed further skips the bytes it has, one that has fewer asks r again
// from where it is.
func (f *fetcher) writer(ctx context.Context, t *transfer, r *remote, body io.ReadCloser, st dtfc.State, at int64) (*blobstore.Writer, io.ReadCloser, error) {
	opts := blobstore.WriterOptions{Progress: t.progress, Size: st.Size}
	var w *blobstore.Writer
	var err error
	if st.Size >= resumeMin && t.check == nil {
		w, err = f.store.NewResumableWriter(st.ID, st.Size, opts)
	} else {
		w, err = f.store.NewWriter(opts)
	}
	if err != nil {
		body.Close()
		return nil, nil, err
	}
	switch have := w.Size(); {
	case have > at:
		_, err = io.CopyN(io.Discard, body, have-at)
	case have < at:
		body.Close()
		var got dtfc.State
		body, got, err = r.node.Open(ctx, st.ID, have)
		if err == nil && got.Size != st.Size {
			body.Close()
			err = fmt.Errorf("peer %s: %s changed size", r.URL, st.ID)
		}
	}
	if err != nil {
		if body != nil {
			body.Close()
		}
		w.Close()
		return nil, nil, err
	}
	return w, body, nil
}

// bodyEnd is where a body from byte at, of length bytes (-1: all) of a
// blob of size bytes, ends.
func bodyEnd(at, length, size int64) int64 {
	if length < 0 {
		return size
	}
	return min(at+length, size)
}

// continued reads body, r's copy of the blob id from byte pos up to byte
// end, then the rest of it, to size, from r in a second request.
type continued struct {
	ctx      context.Context
	r        *remote
	id       dtfc.ID
	size     int64
	body     io.ReadCloser
	pos, end int64
}

func (c *continued) Read(p []byte) (int, error) {
	if c.pos == c.end && c.end < c.size {
		c.body.Close()
		b, st, err := c.r.node.Open(c.ctx, c.id, c.end)
		if err == nil && st.Size != c.size {
			b.Close()
			err = fmt.Errorf("peer %s: %s changed size", c.r.URL, c.id)
		}
		if err != nil {
			c.body = http.NoBody
			return 0, err
		}
		c.body, c.end = b, c.size
	}
	n, err := c.body.Read(p)
	c.pos += int64(n)
	if err == io.EOF && c.pos < c.end {
		err = io.ErrUnexpectedEOF
	} else if err == io.EOF && c.end < c.size {
		err = nil // the second request next
	}
	return n, err
}

func (c *continued) Close() error { return c.body.Close() }

// count counts a result of a miss's transfer (dtfc_peer_fetches_total).
func (f *fetcher) count(t *transfer, result string) {
	if t.miss {
		f.metrics.fetches.WithLabelValues(result).Inc()
	}
}

// preferred returns cands with first (if any) moved, or put, first.
func preferred(cands []*remote, first *remote) []*remote {
	if first == nil {
		return cands
	}
	out := []*remote{first}
	for _, r := range cands {
		if r.URL != first.URL {
			out = append(out, r)
		}
	}
	return out
}

// resume opens the rest of st's blob, from byte off, at a holder: another
// than last if one can send it, else last again.
func (f *fetcher) resume(ctx context.Context, id dtfc.ID, st dtfc.State, off int64, last *remote) (*remote, io.ReadCloser, error) {
	cands := f.candidates(id)
	for i, r := range cands {
		if r == last && i < len(cands)-1 {
			cands = append(append(cands[:i:i], cands[i+1:]...), r)
			break
		}
	}
	var errs []error
	for _, r := range cands {
		body, got, err := r.node.Open(ctx, id, off)
		if err == nil && got.Size != st.Size {
			body.Close()
			err = fmt.Errorf("peer %s: %s changed size", r.URL, id)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return r, body, nil
	}
	return nil, nil, fmt.Errorf("continuing %s at byte %d: %w", id, off, errors.Join(errs...))
}

// copyInto writes body into w up to size bytes, checkpointing a resumable
// w every checkpointEvery bytes (unless the last checkpoint is still
// being written). cut tells an error of body (the link, the
// peer: w is still good at its Size) from one of w.
func copyInto(w *blobstore.Writer, body io.Reader, size int64) (err error, cut bool) {
	src := &sourceReader{r: body}
	for w.Size() < size {
		seg := size - w.Size()
		if w.Resumable() {
			seg = min(seg, checkpointEvery-w.Size()%checkpointEvery)
		}
		n, err := w.ReadFrom(io.LimitReader(src, seg))
		if src.err != nil {
			return src.err, true
		}
		if err != nil {
			return err, false
		}
		if n < seg {
			return io.ErrUnexpectedEOF, true
		}
		if w.Size() < size {
			w.CheckpointSoon() // in the background: the transfer goes on
		}
	}
	return nil, false
}

// sourceReader remembers its reader's error (other than EOF).
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// leave takes t out of inflight, once: after its commit (so a blob absent
// both from inflight and locally is truly missing), and before its end is
// announced, so that no caller joins a transfer that has already failed.
func (f *fetcher) leave(t *transfer) {
	f.mu.Lock()
	if f.inflight[t.id] == t {
		delete(f.inflight, t.id)
		f.gen++
	}
	f.mu.Unlock()
}

// download reads a blob while it arrives from a peer (the Blob of a
// transfer). Reads block until the bytes are there; the last byte is held
// back until the whole blob has hashed to its ID, so a reader never
// completes a body of wrong bytes: on a mismatch the read returns an
// error instead.
type download struct {
	t      *transfer
	ctx    context.Context
	off    int64
	closed bool
}

// Read implements io.Reader.
func (d *download) Read(p []byte) (int, error) {
	t := d.t
	size := t.st.Size
	for {
		ch := t.changed.Wait() // before the state is read: no change is missed
		t.mu.Lock()
		avail, ok, fin, res := t.written, t.verified, t.finished, t.result
		t.mu.Unlock()
		if fin && res != nil && !ok {
			return 0, fmt.Errorf("transfer from %s failed: %w", t.src, res)
		}
		if !ok {
			avail = min(avail, size-1)
		}
		if d.off >= size && ok {
			return 0, io.EOF
		}
		if d.off < avail {
			n := int(min(int64(len(p)), avail-d.off))
			n, err := t.w.ReadAt(p[:n], d.off)
			d.off += int64(n)
			if err == io.EOF && d.off < avail {
				err = io.ErrUnexpectedEOF
			} else if err == io.EOF {
				err = nil
			}
			return n, err
		}
		select {
		case <-ch:
		case <-d.ctx.Done():
			return 0, d.ctx.Err()
		}
	}
}

// Seek implements io.Seeker.
func (d *download) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += d.off
	case io.SeekEnd:
		offset += d.t.st.Size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	d.off = offset
	return offset, nil
}

// Wait blocks until the transfer has finished and returns its result: nil
// if the blob was verified and stored.
func (d *download) Wait(ctx context.Context) error { return d.t.wait(ctx) }

// Failed returns the transfer's error if it has finished with one before
// its bytes were verified (a failure to store verified bytes does not make
// what readers received wrong).
func (d *download) Failed() error {
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	if d.t.finished && !d.t.verified {
		return d.t.result
	}
	return nil
}

// Close releases the download; the transfer goes on for other readers and
// for the store.
func (d *download) Close() error {
	if !d.closed {
		d.closed = true
		d.t.release()
	}
	return nil
}
