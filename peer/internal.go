package peer

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/internal/iox"
)

// servedStore is what answering a peer needs of the blob store: what it holds, and
// the means to take what the peer sends.
type servedStore interface {
	NodeID() string
	Open(id dtfc.ID) (*blobstore.Blob, error)
	OpenQuietly(id dtfc.ID) (*blobstore.Blob, error)
	Stat(id dtfc.ID) (dtfc.State, error)
	Forgotten(id dtfc.ID) (dtfc.State, bool)
	Apply(st dtfc.State) (blobstore.Outcome, error)
	ApplyDeny(d blobstore.Deny) (bool, error)
	Denied(id dtfc.ID) (blobstore.Deny, bool)
	NewWriter(opts blobstore.WriterOptions) (*blobstore.Writer, error)
	CommitBatch(items []blobstore.BatchItem) []blobstore.BatchResult
	Digests() ([256]blobstore.Digest, error)
	SubDigests(first byte) ([256]blobstore.Digest, error)
	DenyDigest() (string, error)
	States(prefix []byte, fn func(dtfc.State) error) error
}

func (c *Cluster) servedStore() servedStore { return c.store }

// InternalHandler serves the node-to-node routes (mounted under
// /_internal). When a cluster secret is configured, every one of them
// refuses a request that does not carry it.
func (c *Cluster) InternalHandler() http.Handler {
	r := chi.NewRouter()
	r.Use(c.authPeer, heartbeat)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such node-to-node route")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusMethodNotAllowed, "method not allowed on this node-to-node route")
	})
	// Membership records: exchanged with any node of the cluster, a
	// removed one included (the answer tells it it was removed).
	r.Post(routeMembers, c.hMembers)
	// Everything else is refused to a node removed from the cluster.
	r.Group(func(r chi.Router) {
		r.Use(c.notFromRemoved)
		// Handing out blobs and single states: refused while this node
		// resyncs (they may be files the cluster deleted and forgot while it
		// was away). Listings stay readable, marked resyncing: importing from
		// them is the reader's decision, and a resync compares with them.
		r.Group(func(r chi.Router) {
			r.Use(c.notResyncing)
			r.Get(routeBlob+"{id}", c.hGetBlob)
			r.Head(routeBlob+"{id}", c.hGetBlob)
		})
		// A single state: refused too, but for a delete this node forgot
		// (hState), which a resync against it needs even while it resyncs.
		r.Get(routeState+"{id}", c.hState)
		r.Get(routeDigests, c.hDigests)
		r.Get(routeDigests+"/{first}", c.hDigests)
		r.Get(routeStates, c.hStates)
		r.Post(routeLookup, c.hLookup)
		r.Get(routeDeny, c.hDenyList)
		r.Post(routeResynced, c.hResynced)
		// Receiving states: always, but not from a peer this node marked
		// expired until it resynced.
		r.Group(func(r chi.Router) {
			r.Use(c.notFromExpired, c.notePushes)
			r.Put(routeBlob+"{id}", c.hPutBlob)
			r.Post(routeBlobs, c.hPutBlobs)
			r.Post(routeChanges, c.hChanges)
		})
	})
	return r
}

func (c *Cluster) notResyncing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.resync.holds() {
			refuseResyncing(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refuseResyncing answers that this node resyncs and vouches for nothing.
func refuseResyncing(w http.ResponseWriter) {
	w.Header().Set(HeaderResyncing, "1")
	w.Header().Set("Retry-After", "5")
	writeErr(w, http.StatusServiceUnavailable, "resyncing: peers forgot deletes this node never acknowledged; ask another node")
}

// notFromExpired refuses what a peer this node marked expired offers: its
// states may be files deleted here and forgotten. The answer tells it to
// resync. What a peer another peer marked offers is refused too, the
// answer naming that peer (heardmarks.go).
func (c *Cluster) notFromExpired(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from := r.Header.Get(HeaderFrom)
		if m, ok := c.markOfNode(from); ok {
			w.Header().Set(HeaderExpired, formatExpired(m.Horizon))
			writeErr(w, http.StatusConflict, "this node forgot deletes you never acknowledged (you were away longer than tombstone_expiry): resync before offering anything")
			return
		}
		if by, ok := c.markedElsewhere(from); ok {
			writeErr(w, http.StatusConflict, "peer "+by+" marked you expired (it forgot deletes you never acknowledged): nothing is taken from you here until you resynced against it")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (c *Cluster) authPeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set(HeaderNode, c.servedStore().NodeID())
		h.Set(HeaderRole, string(c.opts.Role))
		h.Set(HeaderMarks, c.marksHeader())
		if c.opts.RequirePeerCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
			writeErr(w, http.StatusForbidden, "node-to-node route: a client certificate signed by the cluster's CA is required")
			return
		}
		if c.opts.Secret != "" && !c.secretOK(r.Header.Get(HeaderSecret)) {
			writeErr(w, http.StatusUnauthorized, "node-to-node route: missing or wrong cluster secret")
			return
		}
		h.Set(HeaderInstance, c.inst.own)
		if why := c.checkRequest(r); why != "" {
			h.Set(HeaderConflict, "1")
			writeErr(w, http.StatusConflict, why)
			return
		}
		if from := r.Header.Get(HeaderFrom); from != "" {
			if m, ok := c.markOfNode(from); ok {
				h.Set(HeaderExpired, formatExpired(m.Horizon))
			}
			if horizon, ok := parseExpired(r.Header.Get(HeaderExpired)); ok {
				if rm := c.mem.Load().byIdentity("node " + from); rm != nil {
					c.expiredBy(rm, horizon)
				}
			}
			c.heardMarks(from, r.Header.Get(HeaderMarks))
			c.heardFrom(from)
			if c.markOfUnknown(from) {
				// The sender may be a peer marked before this node knew
				// its identity: ask those peers who they are
				// (identifyLoop). Meanwhile what it offers is taken: a
				// copy of a file deleted and forgotten here is no news to
				// the store (its memory of forgotten deletes is kept
				// while a peer is marked).
				c.identifySig.Notify()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// heartbeatEvery is how often a node-to-node request still being worked
// on answers 102 Processing: the caller's progress watch (stallTimeout)
// then tells a busy peer from one that stopped answering.
var heartbeatEvery = 5 * time.Second

// heartbeat sends 102 Processing every heartbeatEvery until the handler
// starts its answer.
func heartbeat(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hw := &heartbeatWriter{ResponseWriter: w}
		// Under mu: the first beat may come before the assignment is
		// done otherwise.
		hw.mu.Lock()
		hw.timer = time.AfterFunc(heartbeatEvery, hw.beat)
		hw.mu.Unlock()
		defer hw.stop()
		next.ServeHTTP(hw, r)
	})
}

// heartbeatWriter serialises the heartbeats with the handler's first
// write; after it, calls pass straight through.
type heartbeatWriter struct {
	http.ResponseWriter
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func (hw *heartbeatWriter) beat() {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.stopped {
		return
	}
	hw.ResponseWriter.WriteHeader(http.StatusProcessing)
	hw.timer.Reset(heartbeatEvery)
}

func (hw *heartbeatWriter) stop() {
	hw.mu.Lock()
	hw.stopped = true
	t := hw.timer
	hw.mu.Unlock()
	t.Stop()
}

func (hw *heartbeatWriter) WriteHeader(code int) {
	hw.stop()
	hw.ResponseWriter.WriteHeader(code)
}

func (hw *heartbeatWriter) Write(p []byte) (int, error) {
	hw.stop()
	return hw.ResponseWriter.Write(p)
}

// ReadFrom keeps sendfile for blobs served to peers.
func (hw *heartbeatWriter) ReadFrom(r io.Reader) (int64, error) {
	hw.stop()
	if rf, ok := hw.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(hw.ResponseWriter, r)
}

// Unwrap lets http.ResponseController reach the connection.
func (hw *heartbeatWriter) Unwrap() http.ResponseWriter { return hw.ResponseWriter }

func (hw *heartbeatWriter) Flush() {
	hw.stop()
	if f, ok := hw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// secretOK compares a presented secret with every accepted one, each in
// constant time.
func (c *Cluster) secretOK(got string) bool {
	ok := secretOK(got, c.opts.Secret)
	for _, s := range c.opts.AcceptSecrets {
		ok = secretOK(got, s) || ok
	}
	return ok
}

// heardFrom wakes the pusher towards a peer that just contacted us, if it
// was backing off (the peer failed, or refused pushes more than pushWake
// ago): a peer that returns is caught up at once rather than at its next
// retry, up to 30 s later.
func (c *Cluster) heardFrom(node string) {
	for _, r := range c.mem.Load().remotes {
		r.mu.Lock()
		match := r.nodeID == node && (r.failures > 0 || r.pushRetryLocked())
		r.mu.Unlock()
		if match {
			r.wake()
		}
	}
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func idParam(w http.ResponseWriter, r *http.Request) (dtfc.ID, bool) {
	id, err := dtfc.ParseID(chi.URLParam(r, "id"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return id, false
	}
	return id, true
}

// hGetBlob serves this node's own copy of a blob, never one it would have
// to fetch: a peer answering a peer does not forward.
func (c *Cluster) hGetBlob(w http.ResponseWriter, r *http.Request) {
	id, ok := idParam(w, r)
	if !ok {
		return
	}
	open := c.servedStore().Open
	if r.Header.Get(HeaderFetch) == fetchRepair {
		open = c.servedStore().OpenQuietly // not a read: the order of eviction stays
	}
	b, err := open(id)
	if errors.Is(err, blobstore.ErrNotFound) {
		writeErr(w, http.StatusNotFound, "not held by this node")
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	defer b.Close()
	h := w.Header()
	h.Set(HeaderState, encodeStateHeader(b.State))
	h.Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, b)
}

// hPutBlob receives a pushed blob with its state. The bytes are verified
// against the ID before anything is stored; a mismatch (corruption in
// transit) is refused, and the pusher retries. A pusher that can resume
// (HeaderResume) is refused before the body (409, HeaderResumeFrom) if
// this node kept part of the blob from a cut transfer, and sends the rest
// (HeaderOffset).
func (c *Cluster) hPutBlob(w http.ResponseWriter, r *http.Request) {
	id, ok := idParam(w, r)
	if !ok {
		return
	}
	st, err := decodeStateHeader(r.Header.Get(HeaderState))
	if err == nil {
		err = validState(st)
	}
	if err != nil || st.ID != id || st.Deleted {
		writeErr(w, http.StatusBadRequest, "missing or inconsistent state header")
		return
	}
	resumable := r.Header.Get(HeaderResume) != ""
	off, err := parseOffset(r.Header.Get(HeaderOffset))
	switch {
	case err != nil:
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("bad %s: %v", HeaderOffset, err))
		return
	case off > 0 && (!resumable || off > st.Size || r.ContentLength != st.Size-off):
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("%s %d: the body must be the rest of the %d-byte blob, with %s", HeaderOffset, off, st.Size, HeaderResume))
		return
	}
	// One transfer of the ID at a time on this node (receive.go): a push
	// that finds one in flight (a miss, a pull, another push) waits for
	// it and applies its state again, reading nothing if the bytes came.
	var t *transfer
	for tries := 0; t == nil; tries++ {
		out, err := c.servedStore().Apply(st)
		if err != nil {
			c.refusedClock(err)
			writeErr(w, httpstatus.Of(err), err.Error())
			return
		}
		if out != blobstore.NeedBytes {
			// Stale, or the bytes were here already: nothing to read.
			writeJSON(w, http.StatusOK, map[string]string{"result": out.String()})
			return
		}
		if tries == 3 {
			writeErr(w, http.StatusServiceUnavailable, errPushBusy.Error())
			return
		}
		if have := c.fetch.kept(id, st.Size); resumable && have != off {
			resumeAt(w, have, off)
			return
		}
		t, err = c.fetch.claimPush(r.Context(), id, func() bool {
			b, err := c.store.OpenQuietly(id)
			if err == nil {
				b.Close()
			}
			return err == nil
		})
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err.Error())
			return
		}
	}
	defer t.release()
	body := &iox.IdleReader{R: r.Body, Deadline: http.NewResponseController(w), Idle: internalIdle}
	res, received, err := c.fetch.receivePush(t, st, body, off, "push from "+r.Header.Get(HeaderFrom))
	var rf *resumeFromError
	switch {
	case errors.As(err, &rf):
		resumeAt(w, rf.Have, off)
		return
	case errors.Is(err, errPushBusy):
		writeErr(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err != nil && !received {
		writeErr(w, httpstatus.Of(err), fmt.Sprintf("receiving %s: %v", id, err))
		return
	}
	if err != nil {
		c.refusedClock(err)
		writeErr(w, httpstatus.Of(err), err.Error())
		return
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	writeJSON(w, status, map[string]string{"result": "applied"})
}

// resumeAt refuses a push whose body starts at byte off, unread: this
// node holds the first have bytes of the blob, and the body is to start
// there.
func resumeAt(w http.ResponseWriter, have, off int64) {
	w.Header().Set(HeaderResumeFrom, strconv.FormatInt(have, 10))
	writeErr(w, http.StatusConflict, fmt.Sprintf("this node holds the first %d bytes of the blob: send it from there (the body started at byte %d)", have, off))
}

// hPutBlobs receives many small pushed blobs in one request (see
// PutBatch), each as hPutBlob receives one: its state checked and
// applied first (the bytes of a state that needs none are read and
// dropped), its bytes streamed into a Writer of its own and verified
// against its ID before anything is stored. They are committed together
// (blobstore's CommitBatch: syncs and the metadata commit shared), and
// the answer, one result per blob, comes after that commit: a pusher
// moves its cursor only past what is durable here.
func (c *Cluster) hPutBlobs(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxBatchBody {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("a batch of blobs takes at most %d bytes", maxBatchBody))
		return
	}
	body := &iox.IdleReader{R: http.MaxBytesReader(w, r.Body, maxBatchBody), Deadline: http.NewResponseController(w), Idle: internalIdle}
	br := bufio.NewReaderSize(body, maxFrameHead)
	var (
		results []batchResult
		items   []blobstore.BatchItem
		at      []int // items[j] is answered by results[at[j]]
	)
	defer func() {
		for _, it := range items {
			it.Writer.Close()
		}
	}()
	buf := make([]byte, maxBatchBlobSize) // one blob's bytes at a time
	for {
		st, err := readFrameHead(br)
		if err == io.EOF {
			break
		}
		if err == nil && len(results) == maxBatchBlobs {
			err = httpstatus.Errorf(http.StatusBadRequest, "more than %d blobs in one batch", maxBatchBlobs)
		}
		var res batchResult
		var bw *blobstore.Writer
		if err == nil {
			res, bw, err = c.batchBlob(st, br, buf[:st.Size])
		}
		if err != nil {
			err = batchBodyErr(err)
			writeErr(w, httpstatus.Of(err), fmt.Sprintf("batch of blobs, blob %d: %v", len(results), err))
			return
		}
		if bw != nil {
			items = append(items, blobstore.BatchItem{Writer: bw, State: st})
			at = append(at, len(results))
		}
		results = append(results, res)
	}
	for j, cr := range c.servedStore().CommitBatch(items) {
		res := batchResult{Status: http.StatusOK, Result: blobstore.Applied.String()}
		switch {
		case cr.Err != nil:
			c.refusedClock(cr.Err)
			res = itemErr(cr.Err)
		case !cr.Applied:
			res.Result = blobstore.Stale.String()
		case cr.Created:
			res.Status = http.StatusCreated
		}
		results[at[j]] = res
	}
	writeJSON(w, http.StatusOK, batchAnswer{Results: results})
}

// batchBlob takes the bytes (into b, len(b) of them) of one blob of a
// batch, whose state st is applied first: if the state needs them, they
// go into a new Writer for the batch's commit; otherwise they are
// dropped and res is the blob's result. err fails the whole batch (the
// body could not be read).
func (c *Cluster) batchBlob(st dtfc.State, body io.Reader, b []byte) (res batchResult, bw *blobstore.Writer, err error) {
	store := c.servedStore()
	out, err := store.Apply(st)
	switch {
	case err != nil:
		c.refusedClock(err)
		res = itemErr(err)
	case out != blobstore.NeedBytes:
		// Stale, or the bytes were here already: nothing to keep.
		res = batchResult{Status: http.StatusOK, Result: out.String()}
	default:
		bw, err = store.NewWriter(blobstore.WriterOptions{MaxBytes: st.Size, Size: st.Size})
		if err != nil {
			res = itemErr(err)
		}
	}
	if _, err := io.ReadFull(body, b); err != nil {
		if bw != nil {
			bw.Close()
		}
		return res, nil, err
	}
	if bw == nil {
		return res, nil, nil
	}
	if _, err := bw.Write(b); err != nil {
		bw.Close()
		return itemErr(err), nil, nil
	}
	return res, bw, nil
}

// itemErr is the result of a blob of a batch refused with err.
func itemErr(err error) batchResult {
	return batchResult{Status: httpstatus.Of(err), Error: err.Error()}
}

// batchBodyErr tells what went wrong reading a batch's body: a body
// that ends inside a frame or is too large is a bad request (400); an
// idle one, or one cut off, keeps its own error.
func batchBodyErr(err error) error {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return httpstatus.Errorf(http.StatusBadRequest, "a batch of blobs takes at most %d bytes", maxBatchBody)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return httpstatus.Errorf(http.StatusBadRequest, "the body ends inside a blob")
	}
	return err
}

// refusedClock counts a remote state refused for its clock.
func (c *Cluster) refusedClock(err error) {
	if errors.Is(err, blobstore.ErrClockAhead) {
		c.metrics.clockRefusedIn.Inc()
		c.log.Warn("refused a state from a peer: its clock is too far ahead of this node's", "err", err)
	}
}

func (c *Cluster) hState(w http.ResponseWriter, r *http.Request) {
	id, ok := idParam(w, r)
	if !ok {
		return
	}
	st, err := c.servedStore().Stat(id)
	f, forgotten := dtfc.State{}, false
	if errors.Is(err, blobstore.ErrNotFound) {
		f, forgotten = c.servedStore().Forgotten(id)
	}
	if c.resync.holds() && !forgotten {
		refuseResyncing(w)
		return
	}
	if errors.Is(err, blobstore.ErrNotFound) {
		if forgotten {
			// No record, but a delete forgotten lately: a node that lost
			// its metadata, or one resyncing against this one, must not
			// take the blob for one nobody deleted.
			w.Header().Set(HeaderForgotten, encodeStateHeader(f))
		}
		writeErr(w, http.StatusNotFound, "no record of this ID")
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	held, evicted := false, false
	if !st.Deleted {
		if b, err := c.servedStore().OpenQuietly(id); err == nil {
			b.Close()
			held = true
		} else {
			evicted = c.store.Evicted(id)
		}
	}
	writeJSON(w, http.StatusOK, stateAnswer{State: bounded(st), Held: held, Evicted: evicted})
}

// hChanges applies pushed states and deny entries under the
// last-writer-wins rule. A change that alters local state enters this
// node's feed and so flows on to its peers; one that alters nothing stops
// here. A change whose clock is too far ahead is refused ("ahead"); a
// cache answers "cache" to an upload it does not hold (it keeps only what
// is read through it).
func (c *Cluster) hChanges(w http.ResponseWriter, r *http.Request) {
	var req changesRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "bad changes: "+err.Error())
		return
	}
	if len(req.Changes)+len(req.Deny) > maxChanges {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("more than %d changes in one request", maxChanges))
		return
	}
	for i, st := range req.Changes {
		if err := validState(st); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("change %d: %v", i, err))
			return
		}
	}
	for _, d := range req.Deny {
		if err := validDeny(d); err != nil {
			writeErr(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	c.noteOffer(r, len(req.Changes)+len(req.Deny))
	ans := changesAnswer{Results: make([]string, len(req.Changes)), DenyResults: make([]string, len(req.Deny))}
	for i, d := range req.Deny {
		ans.DenyResults[i] = resultOK
		ok, err := c.servedStore().ApplyDeny(d)
		switch {
		case errors.Is(err, blobstore.ErrClockAhead):
			c.refusedClock(err)
			ans.DenyResults[i] = resultAhead
		case err != nil:
			writeErr(w, httpstatus.Of(err), err.Error())
			return
		case ok:
			c.denyApplied(d)
		}
	}
	for i, st := range req.Changes {
		out, err := c.servedStore().Apply(st)
		if errors.Is(err, blobstore.ErrClockAhead) {
			c.refusedClock(err)
			ans.Results[i] = resultAhead
			continue
		}
		if err != nil {
			writeErr(w, httpstatus.Of(err), err.Error())
			return
		}
		ans.Results[i] = resultOK
		switch out {
		case blobstore.Stale:
			// An upload ignored because its ID is blocked here: the
			// block goes back with the answer (see changesAnswer).
			if d, ok := c.servedStore().Denied(st.ID); ok && !st.Deleted && !slices.ContainsFunc(ans.Blocked, func(b blobstore.Deny) bool { return b.ID == st.ID }) {
				ans.Blocked = append(ans.Blocked, d)
			}
		case blobstore.NeedBytes:
			ans.Results[i] = resultNeed
			if c.isCache() {
				ans.Results[i] = resultCache
			}
		case blobstore.Applied:
			c.metrics.received.WithLabelValues(kindOf(st)).Inc()
		}
	}
	writeJSON(w, http.StatusOK, ans)
}

// hResynced lifts the expiry mark of the requesting node, which resynced
// against it.
func (c *Cluster) hResynced(w http.ResponseWriter, r *http.Request) {
	var req resyncedRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "bad resynced: "+err.Error())
		return
	}
	from := r.Header.Get(HeaderFrom)
	if from == "" {
		writeErr(w, http.StatusBadRequest, "resynced: no "+HeaderFrom+" header")
		return
	}
	if !c.clearExpired(from, req.Horizon) {
		writeErr(w, http.StatusConflict, "resynced against another expiry than this node's mark; resync again")
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (c *Cluster) hDigests(w http.ResponseWriter, r *http.Request) {
	var d [256]blobstore.Digest
	var err error
	if first := chi.URLParam(r, "first"); first != "" {
		b, herr := hex.DecodeString(first)
		if herr != nil || len(b) != 1 {
			writeErr(w, http.StatusBadRequest, "want one byte in hex")
			return
		}
		d, err = c.servedStore().SubDigests(b[0])
	} else {
		d, err = c.servedStore().Digests()
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	ans := encodeDigests(c.servedStore().NodeID(), c.isSynced(), &d)
	ans.Resyncing = c.resync.holds()
	ans.Expired = c.expiredNodes()
	if ans.Deny, err = c.servedStore().DenyDigest(); err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

// hStates lists the states of every ID with a prefix, one JSON object per
// line. They are read into memory first (a range is about 1/256 or 1/65536
// of the store) so a slow reader holds no database transaction open.
func (c *Cluster) hStates(w http.ResponseWriter, r *http.Request) {
	prefix, err := hex.DecodeString(r.URL.Query().Get("prefix"))
	if err != nil || len(prefix) > maxStatePrefix {
		writeErr(w, http.StatusBadRequest, "prefix: want up to 8 bytes in hex")
		return
	}
	var states []dtfc.State
	if err := c.servedStore().States(prefix, func(st dtfc.State) error {
		states = append(states, bounded(st))
		return nil
	}); err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, st := range states {
		if err := enc.Encode(st); err != nil {
			return
		}
	}
}

// hLookup answers the states this node knows of the given IDs (a cache
// uses it to learn of deletes of what it holds).
func (c *Cluster) hLookup(w http.ResponseWriter, r *http.Request) {
	var req lookupRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "bad lookup: "+err.Error())
		return
	}
	if len(req.IDs) > maxChanges {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("more than %d IDs in one request", maxChanges))
		return
	}
	ans := lookupAnswer{States: []dtfc.State{}}
	for _, id := range req.IDs {
		st, err := c.servedStore().Stat(id)
		if errors.Is(err, blobstore.ErrNotFound) {
			// A delete forgotten lately counts: a cache nobody lists is
			// not waited for, and learns of it only so
			// (TestUnlistedCacheLearnsForgottenDelete). Taken, it is no
			// news anywhere: every node that forgot it remembers it.
			if f, ok := c.servedStore().Forgotten(id); ok {
				st, err = f, nil
			}
		}
		if err == nil {
			ans.States = append(ans.States, bounded(st))
		}
	}
	writeJSON(w, http.StatusOK, ans)
}
