package couchdb

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dtfc/dtfc"
)

// Field is the document field that records the attachments moved to
// dtfc: doc.dtfc[name] is the Ref of the attachment name.
const Field = "dtfc"

// Ref is the record of one attachment kept in dtfc, the value of
// doc.dtfc[name]:
//
//	{"sha512": "<id>", "content_type": "image/jpeg", "length": 12345}
//
// An application reads the file with GET /<sha512> from any dtfc node.
type Ref struct {
	SHA512      string `json:"sha512"`
	ContentType string `json:"content_type"`
	Length      int64  `json:"length"`
	// Digest is CouchDB's digest of the attachment that was moved
	// ("md5-..."). It is an addition to the reference format, written so
	// that a later run recognises an attachment replaced by one of the
	// same length; readers may ignore it.
	Digest string `json:"digest,omitempty"`
}

// ID parses the reference's sha512.
func (r Ref) ID() (dtfc.ID, error) { return dtfc.ParseID(r.SHA512) }

// matches reports whether r records the attachment s: same length, same
// content type, and the same CouchDB digest when both are known; with
// strict (the attachment is then dropped), both must be known. A
// reference without a digest (the documented form, what a migration
// before the digest wrote, what an application writes for its own
// uploads) cannot tell an attachment replaced by other bytes of the same
// length: dropped as "skipped", the new bytes were in neither store
// (TestMigrateDigestlessRefReuploads). And one recording another type
// than the attachment's lost the type the application corrected
// (TestMigrateContentTypeChangeKept).
func (r Ref) matches(s stub, strict bool) bool {
	if r.Length != s.Length || !dtfc.LooksLikeID(r.SHA512) || r.ContentType != s.ContentType {
		return false
	}
	if r.Digest == "" || s.Digest == "" {
		return !strict
	}
	return r.Digest == s.Digest
}

// stub is an attachment as a document read with attachments=false
// describes it.
type stub struct {
	ContentType string `json:"content_type"`
	Digest      string `json:"digest"`
	Length      int64  `json:"length"`
	Stub        bool   `json:"stub"`
	// Encoding is set ("gzip") when CouchDB stores the attachment
	// compressed (asked for with att_encoding_info=true); its digest is
	// then not the MD5 of the bytes served, so it is not checked.
	Encoding string `json:"encoding"`
}

// document is a CouchDB document as read, split into the parts the
// migration changes. fields keeps every field as CouchDB sent it, so a
// write changes nothing else (numbers keep their exact text).
type document struct {
	fields  map[string]json.RawMessage
	id, rev string
	deleted bool
	// atts are the _attachments stubs as read, stubs their parsed form.
	atts  map[string]json.RawMessage
	stubs map[string]stub
	// refs is the dtfc field as read.
	refs map[string]json.RawMessage
}

// docError marks a document or attachment the migration cannot handle:
// the reason is reported and it is left as it was; the run goes on.
type docError struct {
	attachment string
	reason     string
}

func (e *docError) Error() string {
	if e.attachment != "" {
		return fmt.Sprintf("attachment %q: %s", e.attachment, e.reason)
	}
	return e.reason
}

func invalid(att, format string, args ...any) *docError {
	return &docError{attachment: att, reason: fmt.Sprintf(format, args...)}
}

func parseDoc(raw json.RawMessage) (*document, error) {
	d := &document{}
	if err := json.Unmarshal(raw, &d.fields); err != nil || d.fields == nil {
		return nil, invalid("", "not a JSON object: %v", err)
	}
	str := func(k string) string {
		var s string
		json.Unmarshal(d.fields[k], &s)
		return s
	}
	d.id, d.rev = str("_id"), str("_rev")
	json.Unmarshal(d.fields["_deleted"], &d.deleted)
	if d.id == "" || d.rev == "" {
		return nil, invalid("", "document without _id or _rev")
	}
	d.atts = map[string]json.RawMessage{}
	d.stubs = map[string]stub{}
	if a, ok := d.fields["_attachments"]; ok && string(a) != "null" {
		if err := json.Unmarshal(a, &d.atts); err != nil {
			return nil, invalid("", "_attachments is not an object: %v", err)
		}
		for name, v := range d.atts {
			var s stub
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, invalid(name, "unreadable stub: %v", err)
			}
			if !s.Stub {
				// Read without attachments=true, every attachment is
				// a stub; anything else is not something to move.
				return nil, invalid(name, "not a stub (inline data?)")
			}
			d.stubs[name] = s
		}
	}
	d.refs = map[string]json.RawMessage{}
	if f, ok := d.fields[Field]; ok && string(f) != "null" {
		if err := json.Unmarshal(f, &d.refs); err != nil {
			return nil, invalid("", "field %q exists and is not an object of references (an application's own field?)", Field)
		}
		// Every entry must be a reference too: one that is not (an
		// application's {"schema": 2}) makes the field the
		// application's, which the migration does not write into.
		for name := range d.refs {
			if _, ok := d.ref(name); !ok {
				return nil, invalid("", "field %q holds %q, which is not a reference (an application's own field?)", Field, name)
			}
		}
	}
	return d, nil
}

// ref returns the recorded reference of attachment name, if it is one.
func (d *document) ref(name string) (Ref, bool) {
	raw, ok := d.refs[name]
	if !ok {
		return Ref{}, false
	}
	var r Ref
	if err := json.Unmarshal(raw, &r); err != nil || !dtfc.LooksLikeID(r.SHA512) {
		return Ref{}, false
	}
	return r, true
}

// updated returns the document's fields with refs recorded and the
// attachments in keep left (the others dropped).
func (d *document) updated(refs map[string]Ref, keep map[string]bool) (map[string]json.RawMessage, error) {
	out := maps.Clone(d.fields)
	all := maps.Clone(d.refs)
	for name, r := range refs {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		all[name] = b
	}
	b, err := json.Marshal(all)
	if err != nil {
		return nil, err
	}
	out[Field] = b
	atts := map[string]json.RawMessage{}
	for name, v := range d.atts {
		if keep[name] {
			atts[name] = v
		}
	}
	if len(atts) == 0 {
		delete(out, "_attachments")
	} else if b, err = json.Marshal(atts); err != nil {
		return nil, err
	} else {
		out["_attachments"] = b
	}
	return out, nil
}

// filename chooses the filename recorded in dtfc for an attachment: its
// last path segment, if dtfc takes it as a filename; otherwise none (a
// CouchDB attachment name may hold slashes, begin with _, or look like
// an ID, which dtfc would take as the expected hash).
func filename(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, "_") ||
		len(name) > 255 || !utf8.ValidString(name) || dtfc.LooksLikeID(name) {
		return ""
	}
	if strings.ContainsFunc(name, unicode.IsControl) {
		return ""
	}
	return name
}
