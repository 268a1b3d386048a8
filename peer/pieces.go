package peer

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/broadcast"
)

// A large blob is fetched from several holders at once: each holder has a
// worker that takes pieces of pieceSize bytes, lowest first, asks its
// holder for that range and writes it where it belongs in the temp file
// (Writer.WriteAt). One hasher, the transfer's own goroutine, takes in the
// contiguous prefix as it grows (Writer.HashTo): readers of the transfer
// are streamed that prefix, the first byte still comes at once, and the
// last is held back until the whole blob hashed to its ID, as from one
// holder.
//
// A holder that fails (a cut, a stall, an error) loses its worker, and the
// piece it was on goes back, keeping the bytes it got; when every worker
// has gone, workers start again on the holders that are left, as a
// transfer from one holder resumes. A blob whose bytes from several
// holders do not hash to its ID is fetched again from one holder
// (recheck): each holder's spans of the first try are compared, by CRC,
// with the good copy, and the holders that sent other bytes are backed
// off.

const (
	// pieceSize is the size of a piece: large enough that a request's
	// round trip is small beside it, small enough that a few holders
	// share even a blob of a few dozen MiB.
	pieceSize = 4 << 20
	// piecesMin is the size from which a blob is fetched in pieces; a
	// smaller one comes in one request from one holder.
	piecesMin = 4 * pieceSize
	// pieceWindow is how many pieces past the prefix may be in flight or
	// done: the bytes a slow holder's piece can keep the prefix (and the
	// readers, and the checkpoints) waiting for.
	pieceWindow = 16
)

// pieceSource is a blobSource that can send a range with two ends (and so
// keep its connection for the next piece).
type pieceSource interface {
	OpenPiece(ctx context.Context, id dtfc.ID, off, length int64) (io.ReadCloser, dtfc.State, error)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// piece is a range of the blob; pos is how far it is written.
type piece struct {
	off, pos, end int64
	busy          bool                    // a worker is on it
	stop          context.CancelCauseFunc // ends that worker (see claim)
	// claimedAt and claimedPos: when its worker took it, and where it
	// was then (its rate, for dropSlowest).
	claimedAt  time.Time
	claimedPos int64
}

// take marks p busy for the worker that stop ends. The caller holds s.mu.
func (p *piece) take(stop context.CancelCauseFunc) {
	p.busy, p.stop, p.claimedAt, p.claimedPos = true, stop, time.Now(), p.pos
}

// errSlowHolder ends the worker of a holder whose piece the others waited
// for, idle, for stallTimeout, and would wait for more than twice that
// again at its rate: the piece goes on from where it is, with another
// holder. A holder that trickles a byte now and then is never stalled,
// but it held the prefix, the readers and the transfer for good. It is
// not marked down for it: a steady holder on a slow link is not at fault
// (TestEquallySlowHoldersStayUp).
var errSlowHolder = errors.New("too slow: the other holders waited for its piece")

// span is a run of bytes one holder sent, with their CRC-32C: what a
// recheck compares with the good copy.
type span struct {
	from     *remote
	off, end int64
	crc      uint32
}

// pieces is the shared state of a transfer in pieces.
type pieces struct {
	id   dtfc.ID
	size int64
	w    *blobstore.Writer
	mu   sync.Mutex
	// list is the window: the first piece not done and the next ones,
	// pieceWindow at most; pieces are made as it moves (memory does not
	// grow with the blob: TestPiecesStateIsBounded).
	list    []*piece
	next    int64 // where the first piece not made yet starts
	done    int64 // the bytes of the pieces done and dropped from list
	alive   int   // workers running
	spans   []span
	lastErr error // the last worker's error
	changed broadcast.Signal
}

func newPieces(id dtfc.ID, w *blobstore.Writer, size int64) *pieces {
	s := &pieces{id: id, size: size, w: w, next: w.Size()}
	s.fillWindow()
	return s
}

// fillWindow makes the pieces past the window's last, up to pieceWindow
// in the window. The caller holds s.mu (or s is not shared yet).
func (s *pieces) fillWindow() {
	for len(s.list) < pieceWindow && s.next < s.size {
		end := min(s.next+pieceSize, s.size)
		s.list = append(s.list, &piece{off: s.next, pos: s.next, end: end})
		s.next = end
	}
}

// claim waits for a piece to work on: the one at byte at if it is free
// (where the worker's open body is: -1 if none), else the lowest one free,
// within the window past the prefix; stop ends the worker claiming it. It
// returns nil when none is left to do, or ctx ends. A worker that waits
// for stallTimeout with every piece left busy ends the worker of the
// lowest (errSlowHolder), and takes its piece
// (TestTricklingHolderLosesItsPiece).
func (s *pieces) claim(ctx context.Context, at int64, stop context.CancelCauseFunc) *piece {
	idle := time.NewTimer(stallTimeout)
	defer idle.Stop()
	for {
		ch := s.changed.Wait()
		s.mu.Lock()
		var free *piece
		left := s.next < s.size
		for _, p := range s.list {
			if p.pos == p.end {
				continue
			}
			left = true
			if !p.busy && (free == nil || p.pos == at) {
				free = p
			}
		}
		if free != nil {
			free.take(stop)
			s.mu.Unlock()
			return free
		}
		s.mu.Unlock()
		if !left {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		case <-idle.C:
			s.dropSlowest()
			idle.Reset(stallTimeout)
		}
	}
}

// dropSlowest ends the worker of the lowest busy piece in the window if,
// at the rate it has gone since it was taken, it needs more than twice
// stallTimeout to finish.
func (s *pieces) dropSlowest() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.list {
		if !p.busy || p.pos == p.end || p.stop == nil {
			continue
		}
		moved, took := p.pos-p.claimedPos, time.Since(p.claimedAt)
		if moved <= 0 || time.Duration(float64(took)*float64(p.end-p.pos)/float64(moved)) > 2*stallTimeout {
			p.stop(errSlowHolder)
		}
		return
	}
}

// wrote records n more bytes of p written.
func (s *pieces) wrote(p *piece, n int64) {
	s.mu.Lock()
	p.pos += n
	for len(s.list) > 0 && s.list[0].pos == s.list[0].end {
		s.done += s.list[0].end - s.list[0].off
		s.list[0] = nil
		s.list = s.list[1:]
	}
	s.fillWindow()
	s.mu.Unlock()
	s.changed.Notify()
}

// release gives p back (done, or to be continued by another worker), with
// the span its worker wrote.
func (s *pieces) release(p *piece, sp span) {
	s.mu.Lock()
	p.busy, p.stop = false, nil
	if sp.end > sp.off {
		s.spans = append(s.spans, sp)
	}
	s.mu.Unlock()
	s.changed.Notify()
}

// prefix returns where the contiguous bytes written end, whether every
// piece is written, and how many workers run.
func (s *pieces) prefix() (end int64, done bool, alive int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) == 0 {
		return s.size, true, s.alive
	}
	return s.list[0].pos, false, s.alive
}

// written returns the bytes written in all (progress, for resumes).
func (s *pieces) written() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.done
	for _, p := range s.list {
		n += p.pos - p.off
	}
	return n
}

// work is a holder's worker: it works on p (if not nil: claimed for it),
// then takes pieces until none is left, reading from body (at byte at, up
// to byte end) while it lines up with them. It ends on its holder's first
// failure.
func (s *pieces) work(ctx context.Context, r *remote, src pieceSource, body io.ReadCloser, at, end int64, p *piece) error {
	b := &holderBody{body: body, at: at, end: end}
	defer b.close()
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	if body != nil {
		// Opened before this worker, under the transfer's context: its
		// stop must cut that read too (a body's Close ends a Read).
		defer context.AfterFunc(wctx, func() { body.Close() })()
	}
	if p != nil {
		s.mu.Lock()
		p.take(stop)
		s.mu.Unlock()
	}
	for ; ; p = nil {
		if p == nil {
			at := int64(-1)
			if b.body != nil {
				at = b.at
			}
			p = s.claim(wctx, at, stop)
		}
		if p == nil {
			return s.ended(ctx, wctx)
		}
		if err := s.fill(wctx, r, src, p, b); err != nil {
			if ctx.Err() == nil && wctx.Err() != nil {
				return s.ended(ctx, wctx)
			}
			return err
		}
	}
}

// ended is why a worker ended with no piece to do or a fill cut: its own
// stop's cause (errSlowHolder), or the transfer's end.
func (s *pieces) ended(ctx, wctx context.Context) error {
	if ctx.Err() == nil && wctx.Err() != nil {
		return context.Cause(wctx)
	}
	return ctx.Err()
}

// holderBody is a worker's open answer from its holder, at byte at of
// the blob, sending up to byte end.
type holderBody struct {
	body    io.ReadCloser
	at, end int64
}

func (b *holderBody) close() {
	if b.body != nil {
		b.body.Close()
		b.body = nil
	}
}

// fill writes p from where it is to its end, from b while b lines up with
// it, from a range of its own otherwise, and releases p.
func (s *pieces) fill(ctx context.Context, r *remote, src pieceSource, p *piece, b *holderBody) error {
	buf := pieceBufs.Get().(*[]byte)
	defer pieceBufs.Put(buf)
	sp := span{from: r, off: p.pos, end: p.pos}
	defer func() { s.release(p, sp) }()
	for sp.end < p.end {
		if b.body != nil && (b.at != sp.end || b.at == b.end) {
			b.close() // elsewhere, or done: a range of its own
		}
		if b.body == nil {
			body, st, err := src.OpenPiece(ctx, s.id, sp.end, p.end-sp.end)
			if err == nil && st.Size != s.size {
				body.Close()
				err = fmt.Errorf("peer %s: %s changed size", r.URL, s.id)
			}
			if err != nil {
				return err
			}
			b.body, b.at, b.end = body, sp.end, p.end
		}
		k, err := b.body.Read((*buf)[:min(int64(len(*buf)), min(p.end, b.end)-sp.end)])
		if k > 0 {
			if _, werr := s.w.WriteAt((*buf)[:k], sp.end); werr != nil {
				return localError{werr}
			}
			sp.crc = crc32.Update(sp.crc, castagnoli, (*buf)[:k])
			sp.end += int64(k)
			b.at = sp.end
			s.wrote(p, int64(k))
		}
		switch {
		case err == io.EOF && b.at < b.end:
			return io.ErrUnexpectedEOF
		case err == io.EOF:
			b.close()
		case err != nil:
			return err
		}
	}
	return nil
}

// localError is a worker's failure that is this node's (its disk), not
// the holder's: the transfer ends with it.
type localError struct{ error }

func (e localError) Unwrap() error { return e.error }

var pieceBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// piecesFrom returns the holders to ask for pieces: first (if not nil)
// and others that can send pieces, best first, at most max in all; with
// fresh, none backed off (but first).
func (f *fetcher) piecesFrom(id dtfc.ID, first *remote, max int, fresh bool) []*remote {
	var out []*remote
	if first != nil {
		out = append(out, first)
	}
	for _, r := range f.candidates(id) {
		if len(out) == max {
			break
		}
		if _, ok := r.node.(pieceSource); ok && r != first && !(fresh && r.backedOff()) {
			out = append(out, r)
		}
	}
	return out
}

// inPieces reports whether the transfer of st, from byte at, from r,
// goes in pieces: a large blob, and another holder that can send pieces.
func (f *fetcher) inPieces(t *transfer, r *remote, st dtfc.State, at int64) bool {
	if f.sources < 2 || t.check != nil || st.Size-at < piecesMin {
		return false
	}
	if _, ok := r.node.(pieceSource); !ok {
		return false
	}
	return len(f.piecesFrom(st.ID, r, 2, true)) > 1
}

// copyPieces fills w with st's blob from several holders: r, whose body
// is open at w's Size up to byte end, and the others. It returns how it
// ended, and the spans each holder sent (for a recheck).
func (f *fetcher) copyPieces(ctx context.Context, w *blobstore.Writer, r *remote, body io.ReadCloser, end int64, st dtfc.State) (error, []span) {
	ctx, cancel := context.WithCancel(ctx)
	s := newPieces(st.ID, w, st.Size)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait() // no worker outlives the transfer
	}()
	start := func(holders []*remote, body io.ReadCloser) {
		at := w.Size() // where body is, if any
		s.mu.Lock()
		s.alive += len(holders)
		s.mu.Unlock()
		for i, h := range holders {
			var b io.ReadCloser
			var first *piece
			if i == 0 && body != nil {
				// Its body's piece is its own: no other worker takes it
				// first, leaving what it sent unread.
				b, first = body, s.claim(ctx, at, nil) // its stop is set by work
			}
			wg.Go(func() {
				err := s.work(ctx, h, h.node.(pieceSource), b, at, end, first)
				var local localError
				if errors.As(err, &local) {
					cancel() // the transfer ends with it
				} else if err != nil && ctx.Err() == nil {
					if !errors.Is(err, errPeerNotFound) {
						if !errors.Is(err, errSlowHolder) {
							h.fail(err) // slow is no fault
						}
						f.metrics.fetchResumes.Inc() // its piece goes on elsewhere
					}
					f.log.Info("holder dropped from a transfer in pieces", "id", st.ID.String(), "peer", h.URL, "err", err)
				}
				s.mu.Lock()
				s.alive--
				if err != nil && (s.lastErr == nil || !errors.As(s.lastErr, &local)) {
					s.lastErr = err // a local error stays the one reported
				}
				s.mu.Unlock()
				s.changed.Notify()
			})
		}
	}
	holders := f.piecesFrom(st.ID, r, f.sources, true)
	f.log.Debug("fetching in pieces", "id", st.ID.String(), "holders", len(holders), "size", st.Size)
	start(holders, body)
	checked := w.Size() / checkpointEvery
	fails, moved := 0, s.written()
	for {
		ch := s.changed.Wait()
		end, done, alive := s.prefix()
		if end > w.Size() {
			if err := w.HashTo(end); err != nil {
				return err, nil
			}
			if c := w.Size() / checkpointEvery; c > checked && w.Size() < st.Size {
				checked = c
				w.CheckpointSoon()
			}
		}
		if done {
			break
		}
		if alive == 0 {
			// Every holder dropped out: start again on those left, as a
			// cut transfer resumes.
			s.mu.Lock()
			lastErr := s.lastErr
			s.mu.Unlock()
			if n := s.written(); n > moved {
				fails, moved = 0, n
			}
			if fails++; fails > maxResumes || ctx.Err() != nil {
				return errors.Join(lastErr, ctx.Err()), nil
			}
			holders := f.piecesFrom(st.ID, nil, f.sources, false)
			if len(holders) == 0 {
				return fmt.Errorf("no holder left to continue %s at byte %d: %w", st.ID, w.Size(), lastErr), nil
			}
			f.log.Info("transfer in pieces lost its holders; continuing", "id", st.ID.String(), "err", lastErr,
				"at", w.Size(), "size", st.Size, "holders", len(holders))
			start(holders, nil)
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			cancel()
			wg.Wait()
			return errors.Join(ctx.Err(), s.lastErr), nil
		}
	}
	cancel()
	wg.Wait()
	return nil, s.spans
}

// check is what a recheck (a transfer from one holder after a transfer in
// pieces failed its hash) compares: the spans of the failed try, and the
// holders already tried.
type check struct {
	spans []span
	tried map[*remote]bool
}

// recheck starts, in place of t (which failed its hash after a transfer
// in pieces, or a recheck), a transfer of t's blob from one holder not
// tried yet, which blames the holders whose spans differ from its bytes.
// Readers of t fail (what they got may be wrong); those who come next
// join the new transfer. It returns false if no holder is left to try.
func (f *fetcher) recheck(t *transfer, ck *check) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inflight[t.id] != t || f.stopped {
		return false
	}
	var next *remote
	for _, r := range f.candidates(t.id) {
		if _, ok := r.node.(pieceSource); ok && !ck.tried[r] {
			next = r
			break
		}
	}
	if next == nil {
		return false
	}
	ck.tried[next] = true
	f.start(t.id, next, ck)
	return true
}

// blame compares the spans of the failed try with w's good bytes, and
// backs off each holder that sent other bytes.
func (f *fetcher) blame(w *blobstore.Writer, ck *check) {
	bad := map[*remote]int{}
	buf := make([]byte, 256<<10)
	for _, sp := range ck.spans {
		var crc uint32
		for off := sp.off; off < sp.end; {
			k := int(min(int64(len(buf)), sp.end-off))
			if _, err := w.ReadAt(buf[:k], off); err != nil {
				f.log.Warn("could not read back a fetched blob to compare", "err", err)
				return
			}
			crc = crc32.Update(crc, castagnoli, buf[:k])
			off += int64(k)
		}
		if crc != sp.crc {
			bad[sp.from]++
		}
	}
	for r, n := range bad {
		d := r.fail(fmt.Errorf("sent bytes that do not match their blob's SHA-512 (%d span(s))", n))
		f.log.Warn("peer sent corrupt bytes in a transfer in pieces; peer skipped", "peer", r.URL, "spans", n, "retry_in", d)
		f.metrics.corruptSources.WithLabelValues(r.URL).Inc()
	}
}
