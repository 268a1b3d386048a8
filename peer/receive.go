package peer

import (
	"context"
	"errors"
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

// errPushBusy means a push found its ID's transfer in flight again and
// again: the pusher retries later.
var errPushBusy = errors.New("the blob keeps arriving by other transfers; retry")

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

// receivePush feeds t, claimed by claimPush, with body, the bytes of a
// pushed blob of state st, and commits them; readers that joined t read
// them as they arrive. received tells an error of the commit from one of
// taking the bytes. It ends t either way; the caller releases it.
func (f *fetcher) receivePush(t *transfer, st dtfc.State, body io.Reader, from string) (res blobstore.Result, received bool, err error) {
	defer func() {
		f.leave(t)
		t.finish(err)
	}()
	w, err := f.store.NewWriter(blobstore.WriterOptions{MaxBytes: st.Size, Size: st.Size, Progress: t.progress})
	if err != nil {
		t.startErr = err
		close(t.ready)
		return res, false, err
	}
	t.st, t.src, t.w = st, from, w // closed by the last release of t
	close(t.ready)
	if _, err := w.ReadFrom(body); err != nil {
		return res, false, err
	}
	if w.Size() == st.Size && w.Sum() == st.ID {
		t.verify()
	}
	res, err = w.CommitState(st, true)
	return res, true, err
}
