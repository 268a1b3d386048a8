package couchdb

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/internal/sleep"
)

// Store is where attachments go: a dtfc cluster. *client.Client is one.
type Store interface {
	// Put uploads r and returns the ID the node answered, checked
	// against the bytes sent.
	Put(ctx context.Context, r io.Reader, opts client.PutOptions) (client.PutResult, error)
	// Stat describes a blob; an error matching client.ErrNotFound if no
	// node has it.
	Stat(ctx context.Context, id dtfc.ID) (client.Info, error)
}

var _ Store = (*client.Client)(nil)

// Options configure a Migrator.
type Options struct {
	// Store receives the attachments. Required.
	Store Store
	// RemoveAttachments drops every attachment moved (or found already
	// in dtfc) from the document, in the same update that records its
	// reference.
	RemoveAttachments bool
	// Replicas, if above 1, has each upload wait until that many replicas
	// hold the file (?replicas=N), so that with RemoveAttachments an
	// attachment leaves CouchDB only once the file is on that many disks
	// (an attachment recorded in dtfc earlier is uploaded again for it).
	// An upload not on that many in time (504) fails like a dtfc that
	// fails: retried from the checkpoint (MaxRetries), the attachment
	// left in its document meanwhile.
	Replicas int
	// DryRun reads everything and writes nothing: no upload, no document
	// update, no checkpoint. Report receives "would move" events.
	DryRun bool
	// Batch is the number of changes read per page of the feed; the
	// checkpoint moves past a page once its documents, and those of every
	// page before it, are done. If zero, it defaults to 100.
	Batch int
	// Concurrency is the number of documents migrated at once (pages
	// overlap, so the workers stay busy across pages). If zero, it
	// defaults to 4.
	Concurrency int
	// Target names the dtfc cluster in the checkpoint's ID (the command
	// passes its sorted --server URLs). Ignored if Checkpoint is set.
	Target string
	// Checkpoint is the ID of the _local document holding the sequence
	// reached, without the "_local/" prefix. If empty, it is
	// CheckpointID(Target, RemoveAttachments).
	Checkpoint string
	// Heartbeat is the long-poll heartbeat of Follow: a connection
	// silent for three heartbeats is dropped and re-opened. If zero, it
	// defaults to 10 s.
	Heartbeat time.Duration
	// MaxConflicts bounds the attempts at writing one document that
	// others keep updating (409). If zero, it defaults to 10.
	MaxConflicts int
	// MaxRetries bounds Run's consecutive attempts that fail without
	// moving the checkpoint (CouchDB or dtfc unreachable or failing),
	// each resumed from the checkpoint after a longer pause (0.5 s
	// doubling, at most 15 s); Run then returns the error. Follow retries
	// forever. If zero, it defaults to 6.
	MaxRetries int
	// Logger receives warnings (retries, failures) and, at Info, one line
	// per document updated. If nil, nothing is logged.
	Logger *slog.Logger
	// Progress, if set, is called after each document with the totals so
	// far. Calls never overlap.
	Progress func(Stats)
	// Report, if set, is called for each attachment handled. Calls never
	// overlap.
	Report func(Event)
}

// CheckpointID is the default checkpoint document ID for a dtfc cluster
// (target) and a choice of RemoveAttachments: a run with other options
// starts from the beginning rather than resume where this one stopped.
func CheckpointID(target string, remove bool) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\nremove_attachments=%t", target, remove))
	return "dtfc-migrate-" + hex.EncodeToString(h[:8])
}

// Event describes what happened to one attachment.
type Event struct {
	DocID      string
	Attachment string
	// Action is "moved", "skipped" (already in dtfc), "would move" (a
	// dry run) or "failed".
	Action string
	Length int64
	// ID is the dtfc ID, if known.
	ID string
	// Err is the failure's reason.
	Err error
}

// Failure is an attachment or document that could not be migrated. It
// stays in CouchDB as it was.
type Failure struct {
	DocID      string
	Attachment string
	Reason     string
}

// Stats count what a Migrator did.
type Stats struct {
	// Documents is the number of documents examined (deleted documents,
	// design documents and this migration's own updates not counted).
	Documents int64
	// Updated is the number of documents written (in a dry run: that
	// would be).
	Updated int64
	// Attachments and Bytes count the attachments recorded as moved to
	// dtfc (in a dry run: that would be).
	Attachments int64
	Bytes       int64
	// Skipped counts attachments already recorded and present in dtfc.
	Skipped int64
	// Uploads counts the uploads sent to dtfc, those repeated after a
	// conflict or an error included.
	Uploads int64
	// Conflicts counts 409 answers to document updates.
	Conflicts int64
	// Design counts design documents left alone: their attachments are
	// what CouchDB serves for couchapps.
	Design int64
	// Failures counts the failures; Failed lists the first 1000.
	Failures int64
	Failed   []Failure
}

const maxFailed = 1000

// Migrator moves the attachments of one database to dtfc. It runs one Run
// or Follow at a time.
type Migrator struct {
	db   *DB
	opts Options
	log  *slog.Logger
	ckID string

	mu      sync.Mutex // guards stats, written, inflight, ckRev; serialises callbacks
	stats   Stats
	written map[string]string // doc ID -> the revision this migration wrote
	// inflight holds a channel per document being migrated, closed when
	// it is done.
	inflight map[string]chan struct{}
	ckRev    string
}

// NewMigrator returns a Migrator for db. It starts nothing.
func NewMigrator(db *DB, opts Options) (*Migrator, error) {
	if opts.Store == nil {
		return nil, errors.New("couchdb: Options.Store is required")
	}
	if opts.Batch <= 0 {
		opts.Batch = 100
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 10 * time.Second
	}
	if opts.MaxConflicts <= 0 {
		opts.MaxConflicts = 10
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 6
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ck := opts.Checkpoint
	if ck == "" {
		ck = CheckpointID(opts.Target, opts.RemoveAttachments)
	}
	return &Migrator{db: db, opts: opts, log: log, ckID: "_local/" + ck,
		written: map[string]string{}, inflight: map[string]chan struct{}{}}, nil
}

// CheckpointDoc is the ID of the checkpoint document ("_local/...").
func (m *Migrator) CheckpointDoc() string { return m.ckID }

// Stats returns the totals so far.
func (m *Migrator) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.statsLocked()
}

func (m *Migrator) statsLocked() Stats {
	s := m.stats
	s.Failed = slices.Clone(s.Failed)
	return s
}

// Run migrates every document changed since the checkpoint until the
// change feed has nothing more, moving the checkpoint as pages complete.
// The documents it updates come back in the feed and are then found to
// need nothing (the last of them may be left for the next run). A failure to reach CouchDB or dtfc is retried from
// the checkpoint (see Options.MaxRetries); a document or attachment that
// cannot be migrated is counted in Stats.Failed and left as it was.
func (m *Migrator) Run(ctx context.Context) (Stats, error) {
	err := m.loop(ctx, false)
	return m.Stats(), err
}

// Follow is Run that does not stop when it has caught up: it waits on the
// change feed (long-poll with heartbeat) and migrates documents as they
// change, until ctx ends; then it returns with a nil error. A CouchDB or
// dtfc that goes away or fails is waited for, with backoff (every error is
// retried, a refusal too: it is logged, and an operator may fix it), and
// the feed resumed from the checkpoint.
func (m *Migrator) Follow(ctx context.Context) (Stats, error) {
	err := m.loop(ctx, true)
	if ctx.Err() != nil {
		err = nil
	}
	return m.Stats(), err
}

// backoff is the pause before the nth consecutive retry.
func backoff(n int) time.Duration {
	d := 500 * time.Millisecond << min(n-1, 5)
	d = min(d, 15*time.Second)
	// Up to 25% of jitter, so that several followers do not retry in step.
	return d - time.Duration(rand.Int64N(int64(d/4)+1))
}

func (m *Migrator) loop(ctx context.Context, follow bool) error {
	var since json.RawMessage
	loaded := false
	failures := 0
	for {
		err := ctx.Err()
		if err == nil && !loaded {
			if since, err = m.loadCheckpoint(ctx); err == nil {
				loaded = true
				m.log.Info("starting", "db", m.db.name, "checkpoint", m.ckID, "since", sinceParam(since))
			}
		}
		if err == nil {
			var moved bool
			since, moved, err = m.pass(ctx, since, follow)
			if err == nil {
				return nil // caught up (Run)
			}
			if moved {
				failures = 0
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !follow && !transient(err) {
			return err
		}
		failures++
		if !follow && failures > m.opts.MaxRetries {
			return err
		}
		wait := backoff(failures)
		m.log.Warn("retrying from the checkpoint", "db", m.db.name, "attempt", failures, "in", wait.Round(time.Millisecond), "err", err)
		if err := sleep.For(ctx, wait); err != nil {
			return err
		}
	}
}

// pending is a page of the feed being migrated.
type pending struct {
	last json.RawMessage // the page's last_seq
	left int             // documents not yet done
}

// job is one change to migrate, of a page.
type job struct {
	ch   Change
	page *pending
}

// pass reads the feed from since and migrates what it brings,
// Concurrency documents at a time, until it has caught up (Run: it
// returns a nil error) or fails (Follow returns only so). Pages overlap:
// the next page is read as soon as the previous one is handed out, so a
// large attachment at the end of a page does not leave the other workers
// idle. The checkpoint advances, in order, to the last_seq of each page
// whose documents, and those of every page before it, are all done. It
// returns the sequence checkpointed last, and whether it moved.
func (m *Migrator) pass(ctx context.Context, since json.RawMessage, follow bool) (json.RawMessage, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &feedPass{m: m, ctx: ctx, cancel: cancel, reached: since}
	work := make(chan job, m.opts.Concurrency)
	var wg sync.WaitGroup
	for range m.opts.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.work(work)
		}()
	}
	caughtUp := p.read(since, follow, work)
	close(work)
	wg.Wait()
	p.mu.Lock()
	err := p.failed
	p.mu.Unlock()
	if err == nil && !caughtUp {
		err = ctx.Err()
	}
	return p.reached, p.moved, err
}

// feedPass is the state of one pass: the pages read and not yet
// checkpointed, its first failure, and how far its checkpoint reached.
type feedPass struct {
	m      *Migrator
	ctx    context.Context
	cancel context.CancelFunc // ends the pass, at its first failure

	mu      sync.Mutex // guards pages, failed
	pages   []*pending // in feed order, not yet checkpointed
	failed  error
	ckMu    sync.Mutex // serialises checkpoint writes, in order
	reached json.RawMessage
	moved   bool
}

// fail records the pass's first failure and ends the pass.
func (p *feedPass) fail(err error) {
	p.mu.Lock()
	if p.failed == nil {
		p.failed = err
	}
	p.mu.Unlock()
	p.cancel()
}

// advance checkpoints the pages done at the head of the queue.
func (p *feedPass) advance() {
	p.ckMu.Lock()
	defer p.ckMu.Unlock()
	p.mu.Lock()
	var seq json.RawMessage
	for len(p.pages) > 0 && p.pages[0].left == 0 {
		seq = p.pages[0].last
		p.pages = p.pages[1:]
	}
	p.mu.Unlock()
	if seq == nil || p.ctx.Err() != nil {
		return
	}
	if err := p.m.saveCheckpoint(p.ctx, seq); err != nil {
		p.fail(err)
		return
	}
	p.reached, p.moved = seq, true
}

// work migrates the changes of work until it is closed, advancing the
// checkpoint when it finishes a page.
func (p *feedPass) work(work <-chan job) {
	for j := range work {
		if err := p.m.change(p.ctx, j.ch); err != nil {
			p.fail(err)
			continue
		}
		p.mu.Lock()
		j.page.left--
		done := j.page.left == 0
		p.mu.Unlock()
		if done {
			p.advance()
		}
	}
}

// read reads the feed from since, page by page, and sends the changes to
// migrate to work, until the pass ends or (not following) it has caught
// up, which it reports.
func (p *feedPass) read(since json.RawMessage, follow bool, work chan<- job) (caughtUp bool) {
	next := since
	for p.ctx.Err() == nil {
		page, err := p.m.db.Changes(p.ctx, ChangesOptions{
			Since: next, Limit: p.m.opts.Batch, IncludeDocs: true,
			Longpoll: follow, Heartbeat: p.m.opts.Heartbeat,
		})
		if err != nil {
			p.fail(err)
			break
		}
		if len(page.Results) == 0 {
			if !follow {
				return true
			}
			next = page.LastSeq
			continue
		}
		p.send(page, work)
		next = page.LastSeq
	}
	return false
}

// send queues page, and sends its changes to migrate to work (until the
// pass ends).
func (p *feedPass) send(page *Changes, work chan<- job) {
	jobs := p.m.toMigrate(page.Results)
	pg := &pending{last: page.LastSeq, left: len(jobs)}
	p.mu.Lock()
	p.pages = append(p.pages, pg)
	p.mu.Unlock()
	if len(jobs) == 0 {
		p.advance()
	}
	for _, ch := range jobs {
		select {
		case work <- job{ch: ch, page: pg}:
		case <-p.ctx.Done():
			return
		}
	}
}

// toMigrate returns the changes that bring a document to migrate: not a
// deletion, nor a design document (counted).
func (m *Migrator) toMigrate(changes []Change) []Change {
	var jobs []Change
	for _, ch := range changes {
		switch {
		case ch.Deleted || len(ch.Doc) == 0 || string(ch.Doc) == "null":
		case strings.HasPrefix(ch.ID, "_design/"):
			m.mu.Lock()
			m.stats.Design++
			m.mu.Unlock()
		default:
			jobs = append(jobs, ch)
		}
	}
	return jobs
}

// transient reports whether err may go away by itself: CouchDB or dtfc
// unreachable, restarting or overloaded. A refusal (no such database,
// wrong credentials or token) is not retried.
func transient(err error) bool {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.StatusCode >= 500 || ce.StatusCode == http.StatusRequestTimeout || ce.StatusCode == http.StatusTooManyRequests
	}
	var de *client.Error
	if errors.As(err, &de) {
		return de.StatusCode >= 500 || de.StatusCode == http.StatusRequestTimeout || de.StatusCode == http.StatusTooManyRequests
	}
	return true
}

// change migrates the document of one change.
func (m *Migrator) change(ctx context.Context, ch Change) error {
	// Pages overlap, so a document changed again meanwhile may come twice
	// at once: the second waits for the first, then reads the document
	// again, and finds done what the first did instead of uploading it a
	// second time.
	waited, err := m.lock(ctx, ch.ID)
	if err != nil {
		return err
	}
	defer m.unlock(ch.ID)
	raw := ch.Doc
	if waited {
		raw, err = m.db.Get(ctx, ch.ID, "")
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	d, err := parseDoc(raw)
	if err == nil && d.deleted {
		return nil
	}
	m.mu.Lock()
	if err == nil {
		if rev, ok := m.written[d.id]; ok {
			switch {
			case rev == d.rev:
				// This migration's own update coming back.
				delete(m.written, d.id)
				m.mu.Unlock()
				return nil
			case revGen(d.rev) < revGen(rev):
				// Read before this migration updated the document: that
				// update comes later in the feed, with any after it.
				m.mu.Unlock()
				return nil
			}
			delete(m.written, d.id)
		}
	}
	m.stats.Documents++
	m.mu.Unlock()
	if err == nil {
		err = m.document(ctx, d)
	}
	var de *docError
	if errors.As(err, &de) {
		m.fail(ch.ID, de)
		err = nil
	}
	m.progress()
	return err
}

// revGen is the generation of a revision ("3-abc" is 3), 0 if unreadable.
func revGen(rev string) int {
	g, _, _ := strings.Cut(rev, "-")
	n, err := strconv.Atoi(g)
	if err != nil {
		return 0
	}
	return n
}

// lock marks the document id in flight, after waiting for another
// worker's migration of it to end, if any (then it returns true).
func (m *Migrator) lock(ctx context.Context, id string) (bool, error) {
	waited := false
	for {
		m.mu.Lock()
		busy, ok := m.inflight[id]
		if !ok {
			m.inflight[id] = make(chan struct{})
			m.mu.Unlock()
			return waited, nil
		}
		m.mu.Unlock()
		waited = true
		select {
		case <-busy:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

func (m *Migrator) unlock(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	close(m.inflight[id])
	delete(m.inflight, id)
}

func (m *Migrator) progress() {
	if m.opts.Progress == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opts.Progress(m.statsLocked())
}

func (m *Migrator) report(e Event) {
	if m.opts.Report == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opts.Report(e)
}

func (m *Migrator) fail(docID string, de *docError) {
	m.log.Warn("not migrated", "db", m.db.name, "doc", docID, "attachment", de.attachment, "reason", de.reason)
	m.report(Event{DocID: docID, Attachment: de.attachment, Action: "failed", Err: de})
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Failures++
	if len(m.stats.Failed) < maxFailed {
		m.stats.Failed = append(m.stats.Failed, Failure{DocID: docID, Attachment: de.attachment, Reason: de.reason})
	}
}

// errStale means the revision read is gone (an attachment of it answered
// 404): the document is read again.
var errStale = errors.New("the revision read is no longer current")

// outcome is what migrating one revision of a document amounts to.
type outcome struct {
	refs    map[string]Ref  // references to record
	keep    map[string]bool // attachments to keep in the document
	moved   []Event         // attachments newly recorded
	skipped []Event         // attachments already recorded and present
	failed  []*docError     // attachments that cannot be moved
}

func (o *outcome) changed(d *document) bool {
	return len(o.refs) > 0 || len(o.keep) < len(d.atts)
}

// document migrates d, reading it again after a conflict, until it is
// written, needs nothing, or fails.
func (m *Migrator) document(ctx context.Context, d *document) error {
	// Uploads survive a conflict: the newer revision usually has the same
	// attachments, which then need no second upload.
	uploaded := map[string]Ref{}
	for attempt := 1; ; attempt++ {
		o, err := m.plan(ctx, d, uploaded)
		if err == nil && o.changed(d) && !m.opts.DryRun {
			err = m.write(ctx, d, o)
		}
		if err == nil {
			m.record(d, o)
			return nil
		}
		if !errors.Is(err, ErrConflict) && !errors.Is(err, errStale) {
			return err
		}
		if errors.Is(err, ErrConflict) {
			m.mu.Lock()
			m.stats.Conflicts++
			m.mu.Unlock()
		}
		if attempt >= m.opts.MaxConflicts {
			return invalid("", "gave up after %d attempts: %v", attempt, err)
		}
		// Someone else updated the document between our read and our
		// write: read the newer revision and apply the change to it.
		wait := min(20*time.Millisecond<<attempt, time.Second)
		wait -= time.Duration(rand.Int64N(int64(wait / 2)))
		if err := sleep.For(ctx, wait); err != nil {
			return err
		}
		raw, err := m.db.Get(ctx, d.id, "")
		if errors.Is(err, ErrNotFound) {
			return nil // deleted meanwhile: nothing left to migrate
		}
		if err != nil {
			return err
		}
		if d, err = parseDoc(raw); err != nil {
			return err
		}
		if d.deleted {
			return nil
		}
	}
}

// plan decides what to do with each attachment of d, uploading those not
// yet in dtfc (unless this is a dry run).
func (m *Migrator) plan(ctx context.Context, d *document, uploaded map[string]Ref) (*outcome, error) {
	o := &outcome{refs: map[string]Ref{}, keep: map[string]bool{}}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range d.stubs {
			if !yield(n) {
				return
			}
		}
	})
	for _, name := range names {
		s := d.stubs[name]
		ev := Event{DocID: d.id, Attachment: name, Length: s.Length}
		if r, ok := d.ref(name); ok && r.matches(s, m.opts.RemoveAttachments) && !(m.opts.RemoveAttachments && m.opts.Replicas > 1) {
			present, err := m.present(ctx, r)
			if err != nil {
				return nil, err
			}
			if present {
				ev.Action, ev.ID = "skipped", r.SHA512
				o.skipped = append(o.skipped, ev)
				o.keep[name] = !m.opts.RemoveAttachments
				continue
			}
		}
		key := fmt.Sprintf("%s\x00%s\x00%d\x00%s", name, s.Digest, s.Length, s.ContentType)
		r, ok := uploaded[key]
		if !ok && m.opts.DryRun {
			r, ok = Ref{ContentType: s.ContentType, Length: s.Length, Digest: s.Digest}, true
		}
		if !ok {
			var err error
			r, err = m.upload(ctx, d, name, s)
			var de *docError
			if errors.As(err, &de) {
				// This attachment stays; the others may still move.
				o.failed = append(o.failed, de)
				o.keep[name] = true
				continue
			}
			if err != nil {
				return nil, err
			}
			uploaded[key] = r
		}
		ev.Action, ev.ID = "moved", r.SHA512
		if m.opts.DryRun {
			ev.Action = "would move"
		}
		o.moved = append(o.moved, ev)
		o.refs[name] = r
		o.keep[name] = !m.opts.RemoveAttachments
	}
	for name := range o.keep {
		if !o.keep[name] {
			delete(o.keep, name)
		}
	}
	return o, nil
}

// present reports whether dtfc holds the blob r records, with its length.
func (m *Migrator) present(ctx context.Context, r Ref) (bool, error) {
	id, err := r.ID()
	if err != nil {
		return false, nil
	}
	info, err := m.opts.Store.Stat(ctx, id)
	if errors.Is(err, client.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("dtfc: stat %s: %w", id, err)
	}
	return info.Size == r.Length, nil
}

// write records o in d: one PUT naming d's revision, so a newer revision
// is never overwritten (CouchDB answers 409).
func (m *Migrator) write(ctx context.Context, d *document, o *outcome) error {
	fields, err := d.updated(o.refs, o.keep)
	if err != nil {
		return invalid("", "encoding the update: %v", err)
	}
	rev, err := m.db.Put(ctx, d.id, fields)
	var ce *Error
	if errors.As(err, &ce) && (ce.StatusCode == http.StatusBadRequest || ce.StatusCode == http.StatusForbidden || ce.StatusCode == http.StatusRequestEntityTooLarge) {
		// Refused for good (a validate_doc_update function, say).
		return invalid("", "CouchDB refused the update: %d %s: %s", ce.StatusCode, ce.Name, ce.Reason)
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.written[d.id] = rev
	m.mu.Unlock()
	m.log.Info("document updated", "db", m.db.name, "doc", d.id, "rev", rev, "moved", len(o.moved), "removed", len(d.atts)-len(o.keep))
	return nil
}

// record counts a document done (written, or needing nothing).
func (m *Migrator) record(d *document, o *outcome) {
	for _, e := range o.moved {
		m.report(e)
	}
	for _, e := range o.skipped {
		m.report(e)
	}
	for _, de := range o.failed {
		m.fail(d.id, de)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if o.changed(d) {
		m.stats.Updated++
	}
	m.stats.Attachments += int64(len(o.moved))
	for _, e := range o.moved {
		m.stats.Bytes += e.Length
	}
	m.stats.Skipped += int64(len(o.skipped))
}

// upload streams one attachment from CouchDB to dtfc and returns its
// reference. A transfer corrupted on either side is tried again a few
// times; it then fails the attachment, not the run.
func (m *Migrator) upload(ctx context.Context, d *document, name string, s stub) (Ref, error) {
	var last error
	for attempt := 1; attempt <= 3; attempt++ {
		m.mu.Lock()
		m.stats.Uploads++
		m.mu.Unlock()
		m.log.Debug("uploading", "db", m.db.name, "doc", d.id, "rev", d.rev, "attachment", name, "length", s.Length, "attempt", attempt)
		ar := &attachmentReader{ctx: ctx, db: m.db, doc: d.id, rev: d.rev, name: name, stub: s}
		res, err := m.opts.Store.Put(ctx, ar, client.PutOptions{Filename: filename(name), ContentType: s.ContentType, Size: s.Length, Replicas: m.opts.Replicas})
		ar.Close()
		if ar.err != nil {
			// The bytes from CouchDB were at fault, whatever dtfc
			// answered: the upload was cut before its last byte, so
			// dtfc stored nothing.
			err = ar.err
		}
		switch {
		case err == nil && res.Size != s.Length:
			err = &corrupt{fmt.Sprintf("dtfc stored %d bytes, the attachment has %d", res.Size, s.Length)}
		case err == nil:
			return Ref{SHA512: res.ID.String(), ContentType: s.ContentType, Length: s.Length, Digest: s.Digest}, nil
		}
		var ce *corrupt
		switch {
		case errors.As(err, &ce), errors.Is(err, client.ErrDigestMismatch):
			last = err
			m.log.Warn("transfer corrupted; trying again", "doc", d.id, "attachment", name, "err", err)
			continue
		case errors.Is(err, errStale), errors.Is(err, ErrNotFound):
			return Ref{}, errStale
		}
		var de *client.Error
		if errors.As(err, &de) && de.StatusCode >= 400 && de.StatusCode < 500 &&
			de.StatusCode != http.StatusUnauthorized && de.StatusCode != http.StatusForbidden &&
			de.StatusCode != http.StatusRequestTimeout && de.StatusCode != http.StatusTooManyRequests {
			// dtfc refuses this file (too large, say): another attempt
			// would be refused too.
			return Ref{}, invalid(name, "dtfc refused it: %d %s", de.StatusCode, de.Message)
		}
		return Ref{}, fmt.Errorf("moving %s/%s: %w", d.id, name, err)
	}
	return Ref{}, invalid(name, "%v", last)
}

// corrupt is an attachment whose bytes from CouchDB do not match its stub.
type corrupt struct{ reason string }

func (c *corrupt) Error() string { return c.reason }

// attachmentReader streams an attachment from CouchDB, checking its
// length (and MD5, when CouchDB's digest is the MD5 of the bytes served)
// before it gives the last byte: it holds that byte back until CouchDB's
// answer has ended and matched the stub. A short, long or corrupt transfer
// ends in an error instead, so the upload it feeds is cut before its last
// byte, whether sent with a Content-Length or chunked, and dtfc stores
// nothing. Seek back to the start opens the attachment again, which lets
// the dtfc client try another node.
type attachmentReader struct {
	ctx  context.Context
	db   *DB
	doc  string
	rev  string
	name string
	stub stub

	body    io.ReadCloser
	n       int64 // bytes read from CouchDB
	md5     hash.Hash
	held    [1]byte // the last byte read, not yet given
	holding bool
	ended   bool  // CouchDB's answer ended and matched the stub
	atEnd   bool  // after Seek(0, io.SeekEnd)
	err     error // a failure of CouchDB's side, sticky
}

func (a *attachmentReader) Read(p []byte) (int, error) {
	if a.err != nil {
		return 0, a.err
	}
	if a.atEnd || len(p) == 0 {
		if a.atEnd {
			return 0, io.EOF
		}
		return 0, nil
	}
	if a.ended {
		if a.holding {
			p[0], a.holding = a.held[0], false
			return 1, io.EOF
		}
		return 0, io.EOF
	}
	if err := a.open(); err != nil {
		return 0, err
	}
	// Read after the held byte, which goes first; with room for it only,
	// read one byte aside.
	var one [1]byte
	buf, off := p, 0
	if a.holding {
		if len(p) == 1 {
			buf = one[:]
		} else {
			p[0], off, buf = a.held[0], 1, p[1:]
		}
	}
	n, err := a.body.Read(buf)
	if err = a.count(buf[:n], err); err != nil && err != io.EOF {
		a.err = err
		return 0, err
	}
	if len(p) == 1 && a.holding {
		return a.swapHeld(p, one[0], n, err)
	}
	return a.holdLast(p, off+n, err)
}

// open requests the attachment from CouchDB, if it is not open yet.
func (a *attachmentReader) open() error {
	if a.body != nil {
		return nil
	}
	body, _, err := a.db.Attachment(a.ctx, a.doc, a.name, a.rev)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			err = errStale
		}
		a.err = err
		return err
	}
	a.body = body
	if strings.HasPrefix(a.stub.Digest, "md5-") && a.stub.Encoding == "" {
		a.md5 = md5.New()
	}
	return nil
}

// count takes in b, just read from CouchDB with err, and checks the
// transfer against the stub: more bytes than its length, or at the end
// another length or MD5, is a *corrupt error in place of err.
func (a *attachmentReader) count(b []byte, err error) error {
	a.n += int64(len(b))
	if a.md5 != nil {
		a.md5.Write(b)
	}
	if a.n > a.stub.Length {
		return &corrupt{fmt.Sprintf("CouchDB sent more than the %d bytes of the attachment", a.stub.Length)}
	}
	if err != io.EOF {
		return err
	}
	if a.n != a.stub.Length {
		return &corrupt{fmt.Sprintf("CouchDB sent %d bytes, the attachment has %d", a.n, a.stub.Length)}
	}
	if a.md5 != nil {
		if got := "md5-" + base64.StdEncoding.EncodeToString(a.md5.Sum(nil)); got != a.stub.Digest {
			return &corrupt{fmt.Sprintf("CouchDB sent bytes with digest %s, the attachment's is %s", got, a.stub.Digest)}
		}
	}
	return err
}

// swapHeld is the end of a Read whose p has room for the held byte only:
// it gives that byte and holds the one just read (n is 0 or 1).
func (a *attachmentReader) swapHeld(p []byte, next byte, n int, err error) (int, error) {
	if n == 0 {
		if err == io.EOF {
			a.ended = true
			p[0], a.holding = a.held[0], false
			return 1, io.EOF
		}
		return 0, nil
	}
	p[0], a.held[0] = a.held[0], next
	a.ended = err == io.EOF
	return 1, nil
}

// holdLast is the end of a Read that filled p[:total]: it holds the last
// byte back, unless CouchDB's answer has ended (and matched the stub).
func (a *attachmentReader) holdLast(p []byte, total int, err error) (int, error) {
	if err == io.EOF {
		a.ended, a.holding = true, false
		return total, io.EOF
	}
	if total == 0 {
		return 0, nil
	}
	a.held[0], a.holding = p[total-1], true
	return total - 1, nil
}

// Seek supports what the dtfc client needs: Seek(0, io.SeekCurrent) and
// Seek(0, io.SeekEnd) to learn the length (the stub's), and Seek(0,
// io.SeekStart) to start again.
func (a *attachmentReader) Seek(offset int64, whence int) (int64, error) {
	switch {
	case offset == 0 && whence == io.SeekCurrent:
		if a.atEnd {
			return a.stub.Length, nil
		}
		if a.holding {
			return a.n - 1, nil
		}
		return a.n, nil
	case offset == 0 && whence == io.SeekEnd:
		a.atEnd = true
		return a.stub.Length, nil
	case offset == 0 && whence == io.SeekStart:
		a.Close()
		a.n, a.md5, a.holding, a.ended, a.atEnd, a.err = 0, nil, false, false, false, nil
		return 0, nil
	}
	return 0, errors.New("couchdb: attachment reader: only seeks to the start or the end are supported")
}

func (a *attachmentReader) Close() error {
	if a.body == nil {
		return nil
	}
	err := a.body.Close()
	a.body = nil
	return err
}

// checkpoint is the _local document recording how far the migration got.
type checkpoint struct {
	Rev string `json:"_rev,omitempty"`
	// Seq is the last sequence whose changes were all handled.
	Seq     json.RawMessage `json:"seq"`
	Updated string          `json:"updated"`
	Target  string          `json:"target,omitempty"`
	Remove  bool            `json:"remove_attachments"`
}

func (m *Migrator) loadCheckpoint(ctx context.Context) (json.RawMessage, error) {
	raw, err := m.db.Get(ctx, m.ckID, "")
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the checkpoint %s: %w", m.ckID, err)
	}
	var ck checkpoint
	if err := json.Unmarshal(raw, &ck); err != nil {
		return nil, fmt.Errorf("reading the checkpoint %s: %w", m.ckID, err)
	}
	m.mu.Lock()
	m.ckRev = ck.Rev
	m.mu.Unlock()
	return ck.Seq, nil
}

// saveCheckpoint records seq. A dry run records nothing.
func (m *Migrator) saveCheckpoint(ctx context.Context, seq json.RawMessage) error {
	if m.opts.DryRun {
		return nil
	}
	for attempt := 0; ; attempt++ {
		m.mu.Lock()
		ck := checkpoint{Rev: m.ckRev, Seq: seq, Updated: time.Now().UTC().Format(time.RFC3339),
			Target: m.opts.Target, Remove: m.opts.RemoveAttachments}
		m.mu.Unlock()
		rev, err := m.db.Put(ctx, m.ckID, ck)
		if err == nil {
			m.mu.Lock()
			m.ckRev = rev
			m.mu.Unlock()
			return nil
		}
		if !errors.Is(err, ErrConflict) || attempt >= 2 {
			return fmt.Errorf("writing the checkpoint %s: %w", m.ckID, err)
		}
		// Another writer (a second migration with the same options):
		// take its revision; the later checkpoint wins.
		if _, err := m.loadCheckpoint(ctx); err != nil {
			return err
		}
	}
}
