package couchdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/dtfc/dtfc"
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
	var m map[string]Ref
	if json.Unmarshal(doc.Refs, &m) == nil {
		for _, r := range m {
			if id, err := r.ID(); err == nil {
				refs[id] = true
			}
		}
	}
	return doc.Conflicts, nil
}

// Orphans returns, sorted, the IDs of held that no document of dbs
// references (see References). It deletes nothing: whether an orphan is
// garbage stays a human decision (another application, or a migration
// between its upload and its document update, may hold it).
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
