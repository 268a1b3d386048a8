package peer

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// A pushed blob's bytes are a transfer like a miss's or a pull's (see
// fetch.go): one per ID at a time on this node, whichever mechanism
// asked. A push that finds a transfer of its ID in flight waits for it
// and then applies its state again (the bytes are usually here by then,
// and the push's body is not read); a miss or a pull that finds a push in
// flight joins it and reads the bytes as they arrive.

// A pushed blob of resumeMin bytes or more is written like a miss's
// transfer, through a resumable writer checkpointed every
// checkpointEvery bytes: a push that is cut (the link, the pusher, a
// restart of this node) keeps what it received, and the next push of the
// blob sends only the rest (wire.go: HeaderResume). The kept bytes are a
// partial transfer like any other: a miss of the ID may continue them
// from a holder, and a push may continue those a miss left.

// errPushBusy means a push found its ID's transfer in flight again and
// again, or the bytes kept of it still held by the one before: the
// pusher retries later.
var errPushBusy = errors.New("the blob is busy with other transfers here; retry")

// claimPush makes the push of id's bytes id's transfer, owned by the
// caller, who feeds it with receivePush. If a transfer of id is in
// flight, it waits for its end instead and returns nil: the caller
// applies the pushed state again. It returns nil too if the bytes are
// held now (held tells). As in open, a transfer that ended since the
// look makes it look again.
func (f *fetcher) claimPush(ctx context.Context, id dtfc.ID, held func() bool) (*transfer, error) {
	gen := f.generation()
	if held() {
		return nil, nil
	}
	for {
		f.mu.Lock()
		if t := f.inflight[id]; t != nil {
			t.mu.Lock()
			t.refs++
			t.mu.Unlock()
			f.mu.Unlock()
			defer t.release()
			if err := t.wait(ctx); ctx.Err() != nil {
				return nil, err
			}
			return nil, nil // stored or not: apply again
		}
		if f.gen == gen {
			// Its bytes come with the caller's request: nothing to cut
			// off here (the request's own context does).
			t := &transfer{id: id, ready: make(chan struct{}), refs: 1, cancel: func() {}}
			f.inflight[id] = t
			f.mu.Unlock()
			return t, nil
		}
		gen = f.gen
		f.mu.Unlock()
		if held() {
			return nil, nil
		}
	}
}

// kept returns how many bytes of a blob of size bytes with ID id a push
// would start with here: those a cut transfer of it kept (0 for a blob
// too small to be resumed). It is a hint, read without the ID's
// transfer: receivePush decides with the writer it opens.
func (f *fetcher) kept(id dtfc.ID, size int64) int64 {
	if size < resumeMin {
		return 0
	}
	n, of := f.store.PartialSize(id)
	if of != size {
		return 0
	}
	return n
}

// resumeFromError refuses a pushed body that starts after the bytes this
// node kept of the blob: the pusher is to send it from Have on.
type resumeFromError struct{ Have, Off int64 }

func (e *resumeFromError) Error() string {
	return fmt.Sprintf("the body starts at byte %d; this node holds the first %d bytes", e.Off, e.Have)
}

// receivePush feeds t, claimed by claimPush, with body, the bytes of a
// pushed blob of state st from byte off on (0: all of them), and commits
// them; readers that joined t read them as they arrive. A large blob's
// push continues the bytes kept of it, skipping those of body it holds
// already, and if it is cut, keeps what it received for the next. A body
// that starts after the kept bytes is refused with a *resumeFromError.
// received tells an error of the commit from one of taking the bytes. It
// ends t either way; the caller releases it.
func (f *fetcher) receivePush(t *transfer, st dtfc.State, body io.Reader, off int64, from string) (res blobstore.Result, received bool, err error) {
	defer func() {
		f.leave(t)
		t.finish(err)
	}()
	w, err := f.pushWriter(t, st, body, off)
	if err != nil {
		t.startErr = err
		close(t.ready)
		return res, false, err
	}
	t.st, t.src, t.w = st, from, w // closed by the last release of t
	close(t.ready)
	if cerr, _ := copyInto(w, body, st.Size); cerr != nil {
		if serr := w.Suspend(); serr != nil {
			f.log.Warn("could not keep a cut push", "id", st.ID.String(), "err", serr)
		} else if w.Resumable() {
			f.log.Info("push cut; keeping what came", "id", st.ID.String(), "from", from, "at", w.Size(), "size", st.Size, "err", cerr)
		}
		return res, false, cerr
	}
	// More than the blob: the writer's MaxBytes refuses it.
	if _, rerr := w.ReadFrom(body); rerr != nil {
		return res, false, rerr
	}
	if w.Size() == st.Size && w.Sum() == st.ID {
		t.verify()
	}
	res, err = w.CommitState(st, true)
	return res, true, err
}

// pushWriter opens the store's writer for a pushed blob of state st
// whose body starts at byte off, resumable for a large blob, and lines
// body up with it.
func (f *fetcher) pushWriter(t *transfer, st dtfc.State, body io.Reader, off int64) (*blobstore.Writer, error) {
	opts := blobstore.WriterOptions{MaxBytes: st.Size, Size: st.Size, Progress: t.progress}
	if st.Size < resumeMin {
		return f.store.NewWriter(opts)
	}
	w, err := f.store.NewResumableWriter(st.ID, st.Size, opts)
	if err != nil {
		return nil, err
	}
	switch have := w.Size(); {
	case !w.Resumable() && off > 0:
		// The kept bytes are still held by the transfer before (see
		// NewResumableWriter): neither start over nor wait here.
		err = errPushBusy
	case have < off:
		err = &resumeFromError{Have: have, Off: off}
	case have > off:
		// An older pusher sends it all, and a transfer that ended since
		// the pusher was told where to start may have gone further.
		_, err = io.CopyN(io.Discard, body, have-off)
	}
	if err != nil {
		w.Suspend() // the kept bytes stay kept
		w.Close()
		return nil, err
	}
	if have := w.Size(); have > 0 {
		f.metrics.pushResumes.Inc()
		f.log.Info("pushed blob continues the bytes kept of it", "id", st.ID.String(), "at", have, "sent_from", off, "size", st.Size)
	}
	return w, nil
}
