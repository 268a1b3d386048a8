package couchdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
)

// References adds to refs every dtfc ID that a document of db references
// in its dtfc field: the winning revision of every live document (design
// documents included) and every conflicting revision, which may win once
// the conflict is resolved. It returns the number of documents read.
func References(ctx context.Context, db *DB, refs map[dtfc.ID]bool) (int64, error) {
	var since json.RawMessage
	var docs int64
	for {
		page, err := db.Changes(ctx, ChangesOptions{Since: since, Limit: 500, IncludeDocs: true, Conflicts: true})
		if err != nil {
			return docs, err
		}
		if len(page.Results) == 0 {
			return docs, nil
		}
		for _, ch := range page.Results {
			if ch.Deleted || len(ch.Doc) == 0 || string(ch.Doc) == "null" {
				continue
			}
			docs++
			conflicts, err := addRefs(ch.Doc, refs)
			if err != nil {
				return docs, fmt.Errorf("couchdb: %s/%s: %w", db.name, ch.ID, err)
			}
			for _, rev := range conflicts {
				raw, err := db.Get(ctx, ch.ID, rev)
				if errors.Is(err, ErrNotFound) {
					continue // resolved meanwhile
				}
				if err != nil {
					return docs, err
				}
				if _, err := addRefs(raw, refs); err != nil {
					return docs, fmt.Errorf("couchdb: %s/%s?rev=%s: %w", db.name, ch.ID, rev, err)
				}
			}
		}
		since = page.LastSeq
	}
}

// addRefs adds the IDs a document's dtfc field references and returns its
// _conflicts. A dtfc field that is not a map of references is skipped
// (the document was never migrated), as is a malformed sha512.
func addRefs(raw json.RawMessage, refs map[dtfc.ID]bool) ([]string, error) {
	var doc struct {
		Refs      json.RawMessage `json:"dtfc"`
		Conflicts []string        `json:"_conflicts"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	for _, id := range idsIn(doc.Refs) {
		refs[id] = true
	}
	return doc.Conflicts, nil
}

// idsIn returns every ID written anywhere in raw: each run of exactly 128
// hexadecimal digits. The dtfc field is read this loosely, not as the
// references migrate writes, because what counts as a reference decides
// what the purge deletes: an entry an application wrote its own way (a
// length as a string, a bare ID, an object of its own around them) must
// keep its blob, and must not hide its document's other entries, as the
// one-piece decoding of the whole field did
// (TestOrphansOneOddEntryHidesTheRest).
func idsIn(raw []byte) []dtfc.ID {
	var out []dtfc.ID
	hex := func(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }
	for i := 0; i < len(raw); {
		if !hex(raw[i]) {
			i++
			continue
		}
		j := i
		for j < len(raw) && hex(raw[j]) {
			j++
		}
		if j-i == 2*dtfc.IDLen {
			if id, err := dtfc.ParseID(strings.ToLower(string(raw[i:j]))); err == nil {
				out = append(out, id)
			}
		}
		i = j
	}
	return out
}

// Orphans returns, sorted, the IDs of held that no document of dbs
// references (see References). It deletes nothing: whether an orphan is
// garbage stays a human decision (another application, or a migration
// between its upload and its document update, may hold it). Collect is
// the same with the blobs listed by a node, a grace period, and deletes.
func Orphans(ctx context.Context, dbs []*DB, held []dtfc.ID) ([]dtfc.ID, error) {
	refs := map[dtfc.ID]bool{}
	for _, db := range dbs {
		if _, err := References(ctx, db, refs); err != nil {
			return nil, err
		}
	}
	var out []dtfc.ID
	for _, id := range held {
		if !refs[id] {
			out = append(out, id)
		}
	}
	slices.SortFunc(out, func(a, b dtfc.ID) int { return slices.Compare(a[:], b[:]) })
	return slices.Compact(out), nil
}

// Collection is a dtfc cluster as Collect sees it (*client.Client): a
// node's list of blobs (GET /_blobs) and deletes that reach every node,
// made on the condition that the blob was not uploaded again since the
// time given (If-Unmodified-Since).
type Collection interface {
	List(ctx context.Context, opts client.ListOptions) (client.ListPage, error)
	DeleteUnmodifiedSince(ctx context.Context, id dtfc.ID, since time.Time) error
}

var _ Collection = (*client.Client)(nil)

// MinOlderThan is the shortest grace period Collect deletes with.
const MinOlderThan = time.Minute

// CollectOptions configure Collect.
type CollectOptions struct {
	// Blobs lists the blobs and deletes the orphans. Required.
	Blobs Collection
	// DBs are the databases whose documents reference blobs (see
	// References). Required.
	DBs []*DB
	// OlderThan is the grace period: a blob uploaded less than this long
	// ago is young, never an orphan, referenced or not (its uploader may
	// not have written its reference yet). If zero, age is not looked at,
	// which only a report may do: Purge needs at least MinOlderThan.
	OlderThan time.Duration
	// Purge deletes the orphans; without it Collect only reports them.
	Purge bool
	// Report, if set, is called with every orphan, in ID order, once its
	// fate is known.
	Report func(Orphan)
}

// Orphan is a blob no document references, uploaded longer ago than the
// grace period, and what Collect did with it.
type Orphan struct {
	ID       dtfc.ID
	Size     int64
	Uploaded time.Time
	// Action is "would delete" (no Purge), "deleted", "failed" (Err
	// says why), "kept" (uploaded again since it was listed: young now)
	// or "gone" (deleted by someone else meanwhile).
	Action string
	Err    error
}

// CollectStats count what Collect found and did. Listed = Referenced +
// Young + Orphans + Kept + Gone.
type CollectStats struct {
	// Listed and ListedBytes: the blobs the node listed.
	Listed, ListedBytes int64
	// Documents read in the databases.
	Documents int64
	// Referenced blobs, whatever their age.
	Referenced int64
	// Young: unreferenced, uploaded within the grace period.
	Young int64
	// Orphans and OrphanBytes: unreferenced and old; deleted, failed, or
	// what a report would delete.
	Orphans, OrphanBytes int64
	// Deleted and DeletedBytes: the orphans deleted.
	Deleted, DeletedBytes int64
	// Failed: orphans whose delete failed.
	Failed int64
	// Kept: orphans that were uploaded again between the listing and
	// their delete (young at the re-check).
	Kept int64
	// Gone: orphans no longer listed at the re-check.
	Gone int64
}

// listPage is the page size Collect asks for: the most a node answers.
const listPage = 10000

// Collect finds the blobs a node holds that no document of the databases
// references and that were uploaded longer ago than OlderThan, and with
// Purge deletes them throughout the cluster. It runs in this order, so
// that no blob a document references is deleted:
//
//  1. it lists the node's blobs (GET /_blobs), with their upload times;
//  2. then reads the references of every document of every database,
//     conflicting revisions included (References): a blob uploaded after
//     the listing began is not in it, and one listed and then referenced
//     before its database is read counts as referenced;
//  3. then, for each orphan, reads its entry again (a page of one) just
//     before deleting it: one uploaded again meanwhile (an upload of
//     bytes already held is a new upload, with a new time) is young now
//     and kept, so a writer that uploads and then references a blob is
//     safe while its reference is written within the grace period.
//
// Age is measured against the earlier of this machine's clock and the
// node's (its Date header): a clock running ahead here does not make a
// blob look older. The error is the first that stopped the run (listing,
// references, or a delete refused for want of a token); a delete that
// fails otherwise is counted in Failed and reported, and the run goes on.
func Collect(ctx context.Context, opts CollectOptions) (CollectStats, error) {
	var st CollectStats
	if opts.Blobs == nil || len(opts.DBs) == 0 {
		return st, errors.New("couchdb: Collect needs Blobs and DBs")
	}
	if opts.OlderThan < 0 || (opts.Purge && opts.OlderThan < MinOlderThan) {
		return st, fmt.Errorf("couchdb: a purge needs a grace period of at least %s (OlderThan is %s)", MinOlderThan, opts.OlderThan)
	}
	col := &collector{CollectOptions: opts}
	// What a run holds per blob: its ID, size and upload time here, and
	// its ID in refs.
	type heldBlob struct {
		size     int64
		uploaded time.Time
	}
	held := map[dtfc.ID]heldBlob{}
	var after dtfc.ID
	for {
		page, err := col.list(ctx, after, listPage)
		if err != nil {
			return st, fmt.Errorf("listing the node's blobs: %w", err)
		}
		for _, b := range page.Blobs {
			held[b.ID] = heldBlob{b.Size, b.Uploaded}
			st.Listed++
			st.ListedBytes += b.Size
		}
		if page.Next.IsZero() {
			break
		}
		after = page.Next
	}
	refs := map[dtfc.ID]bool{}
	for _, db := range opts.DBs {
		n, err := References(ctx, db, refs)
		st.Documents += n
		if err != nil {
			return st, err
		}
	}
	var orphans []Orphan
	for id, b := range held {
		switch {
		case refs[id]:
			st.Referenced++
		case col.young(b.uploaded):
			st.Young++
		default:
			orphans = append(orphans, Orphan{ID: id, Size: b.size, Uploaded: b.uploaded, Action: "would delete"})
		}
	}
	slices.SortFunc(orphans, func(a, b Orphan) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	for _, o := range orphans {
		if opts.Purge {
			if err := col.purge(ctx, &o); err != nil {
				return st, err
			}
		}
		switch o.Action {
		case "kept":
			st.Kept++
		case "gone":
			st.Gone++
		default:
			st.Orphans++
			st.OrphanBytes += o.Size
		}
		switch o.Action {
		case "deleted":
			st.Deleted++
			st.DeletedBytes += o.Size
		case "failed":
			st.Failed++
		}
		if opts.Report != nil {
			opts.Report(o)
		}
	}
	return st, nil
}

// collector holds what Collect learns as it goes.
type collector struct {
	CollectOptions
	// behind is how far the node's clock is behind this machine's (zero
	// or negative), the least seen.
	behind time.Duration
}

// list reads a page and notes the node's clock.
func (c *collector) list(ctx context.Context, after dtfc.ID, limit int) (client.ListPage, error) {
	page, err := c.Blobs.List(ctx, client.ListOptions{After: after, Limit: limit})
	if err != nil {
		return page, err
	}
	if !page.Date.IsZero() {
		c.behind = min(c.behind, page.Date.Sub(time.Now()))
	}
	return page, nil
}

// now is the earlier of this machine's clock and the node's.
func (c *collector) now() time.Time { return time.Now().Add(c.behind) }

// young reports whether an upload made at uploaded is within the grace
// period.
func (c *collector) young(uploaded time.Time) bool {
	return c.OlderThan > 0 && c.now().Sub(uploaded) < c.OlderThan
}

// purge reads o's entry again and deletes it if it is still an orphan.
// It returns an error only for what stops the run.
func (c *collector) purge(ctx context.Context, o *Orphan) error {
	page, err := c.list(ctx, idBefore(o.ID), 1)
	if err != nil {
		return fmt.Errorf("reading %s again: %w", o.ID, err)
	}
	if len(page.Blobs) == 0 || page.Blobs[0].ID != o.ID {
		o.Action = "gone"
		return nil
	}
	b := page.Blobs[0]
	if c.young(b.Uploaded) {
		o.Action, o.Uploaded = "kept", b.Uploaded
		return nil
	}
	// On the condition that it was not uploaded again since the entry
	// just read: the node checks it with the delete. An upload between
	// that read and the delete (migrate, which uploads and then drops
	// the attachment) would otherwise be deleted with the attachment
	// gone from CouchDB (TestPurgeRacesMigrate).
	err = c.Blobs.DeleteUnmodifiedSince(ctx, o.ID, b.Uploaded)
	var ce *client.Error
	switch {
	case err == nil:
		o.Action = "deleted"
	case errors.Is(err, client.ErrModified):
		o.Action = "kept"
	case errors.Is(err, client.ErrNotFound):
		o.Action = "gone"
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &ce) && (ce.StatusCode == http.StatusUnauthorized || ce.StatusCode == http.StatusForbidden):
		return fmt.Errorf("deleting %s: %w", o.ID, err)
	default:
		o.Action, o.Err = "failed", err
	}
	return nil
}

// idBefore returns the ID just before id in the listing's order, so that
// a page after it starts with id itself.
func idBefore(id dtfc.ID) dtfc.ID {
	for i := len(id) - 1; i >= 0; i-- {
		id[i]--
		if id[i] != 0xff {
			break
		}
	}
	return id
}
