package couchdb

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFilename(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"photo.jpg", "photo.jpg"},
		{"dir/sub/photo.jpg", "photo.jpg"},
		{`win\path.txt`, "path.txt"},
		{"résumé.txt", "résumé.txt"},
		{"_hidden", ""},
		{"dir/", ""},
		{"..", ""},
		{"a\x01b", ""},
		{strings.Repeat("a", 256), ""},
		{strings.Repeat("ab", 64), ""}, // 128 hex: dtfc would take it as the expected ID
		{"\xff.txt", ""},
	} {
		assert.Equal(t, tc.want, filename(tc.name), "%q", tc.name)
	}
}

// TestUpdateKeepsEverythingElse: the update changes dtfc and _attachments
// only; every other field keeps its exact JSON text (a number beyond
// float64's precision included), and references of attachments removed
// earlier stay.
func TestUpdateKeepsEverythingElse(t *testing.T) {
	raw := `{"_id":"d","_rev":"3-x","big":12345678901234567890,"price":1.50,"nested":{"a":[1,2]},
		"_attachments":{"a.txt":{"stub":true,"length":3,"digest":"md5-aaa","content_type":"text/plain","revpos":2},
		                "b.bin":{"stub":true,"length":5,"digest":"md5-bbb","content_type":"application/octet-stream","revpos":3}},
		"dtfc":{"old.jpg":{"sha512":"` + strings.Repeat("0", 128) + `","content_type":"image/jpeg","length":9,"note":"kept"}}}`
	d, err := parseDoc(json.RawMessage(raw))
	require.NoError(t, err)
	assert.Equal(t, "d", d.id)
	assert.Equal(t, "3-x", d.rev)
	require.Len(t, d.stubs, 2)

	ref := Ref{SHA512: strings.Repeat("a", 128), ContentType: "text/plain", Length: 3, Digest: "md5-aaa"}
	out, err := d.updated(map[string]Ref{"a.txt": ref}, map[string]bool{"b.bin": true})
	require.NoError(t, err)
	b, err := json.Marshal(out)
	require.NoError(t, err)
	s := string(b)
	assert.Contains(t, s, `"big":12345678901234567890`)
	assert.Contains(t, s, `"price":1.50`)
	assert.Contains(t, s, `"_rev":"3-x"`)
	assert.Contains(t, s, `"note":"kept"`)
	var back struct {
		Atts map[string]map[string]any `json:"_attachments"`
		Refs map[string]Ref            `json:"dtfc"`
	}
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, []string{"b.bin"}, keys(back.Atts))
	assert.Equal(t, true, back.Atts["b.bin"]["stub"])
	assert.Equal(t, ref, back.Refs["a.txt"])
	assert.Contains(t, back.Refs, "old.jpg")

	// Nothing kept: no _attachments field at all.
	out, err = d.updated(nil, nil)
	require.NoError(t, err)
	assert.NotContains(t, out, "_attachments")
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestParseDocRefuses(t *testing.T) {
	for _, raw := range []string{
		`[]`,
		`{"_id":"d"}`,
		`{"_id":"d","_rev":"1-a","_attachments":[1]}`,
		`{"_id":"d","_rev":"1-a","_attachments":{"a":{"data":"aGk="}}}`,
		`{"_id":"d","_rev":"1-a","dtfc":"an application's own field"}`,
	} {
		_, err := parseDoc(json.RawMessage(raw))
		var de *docError
		assert.ErrorAs(t, err, &de, raw)
	}
}

func TestRefMatches(t *testing.T) {
	id := strings.Repeat("c", 128)
	s := stub{Length: 10, Digest: "md5-x", ContentType: "text/plain"}
	for _, strict := range []bool{false, true} {
		assert.True(t, Ref{SHA512: id, Length: 10, Digest: "md5-x", ContentType: "text/plain"}.matches(s, strict))
		assert.False(t, Ref{SHA512: id, Length: 10, Digest: "md5-y", ContentType: "text/plain"}.matches(s, strict), "replaced by other bytes of the same length")
		assert.False(t, Ref{SHA512: id, Length: 11, Digest: "md5-x", ContentType: "text/plain"}.matches(s, strict))
		assert.False(t, Ref{SHA512: "nope", Length: 10, Digest: "md5-x", ContentType: "text/plain"}.matches(s, strict))
		assert.False(t, Ref{SHA512: id, Length: 10, Digest: "md5-x", ContentType: "image/png"}.matches(s, strict), "the type changed")
	}
	assert.True(t, Ref{SHA512: id, Length: 10, ContentType: "text/plain"}.matches(s, false), "a reference without digest (written by an application), the attachment kept")
	assert.False(t, Ref{SHA512: id, Length: 10, ContentType: "text/plain"}.matches(s, true), "a reference without digest, the attachment to be dropped")
}

// TestPathsEscapePlus: a '+' in a document ID, an attachment name or a
// database name is sent as %2B: CouchDB 3 reads a bare '+' in a path as
// a space by default.
func TestPathsEscapePlus(t *testing.T) {
	assert.Equal(t, "a%2Bb%20c", docPath("a+b c"))
	assert.Equal(t, "_design/x%2By", docPath("_design/x+y"))
	assert.Equal(t, "dir/f%2B1.txt", attPath("dir/f+1.txt"))
}

// FuzzParseDoc: any document parses or is refused without panicking, and
// an update keeping its attachments changes no other field's JSON and
// parses again to the same attachments.
func FuzzParseDoc(f *testing.F) {
	f.Add(`{"_id":"d","_rev":"1-a","x":1.50,"_attachments":{"a":{"stub":true,"length":3,"digest":"md5-x"}},"dtfc":{}}`)
	f.Add(`{"_id":"d","_rev":"2-b","_deleted":true}`)
	f.Add(`{"_id":"d","_rev":"1-a","dtfc":{"f":{"sha512":"00","length":-1}},"n":[1,{"a":null}]}`)
	f.Fuzz(func(t *testing.T, raw string) {
		d, err := parseDoc(json.RawMessage(raw))
		if err != nil {
			var de *docError
			require.ErrorAs(t, err, &de)
			return
		}
		keep := map[string]bool{}
		for name := range d.atts {
			keep[name] = true
		}
		out, err := d.updated(nil, keep)
		require.NoError(t, err)
		for k, v := range d.fields {
			if k == Field || k == "_attachments" {
				continue
			}
			var a, b bytes.Buffer
			require.NoError(t, json.Compact(&a, v))
			require.NoError(t, json.Compact(&b, out[k]))
			require.Equal(t, a.String(), b.String(), "field %q", k)
		}
		b, err := json.Marshal(out)
		require.NoError(t, err)
		d2, err := parseDoc(b)
		require.NoError(t, err)
		require.Equal(t, d.stubs, d2.stubs)
	})
}
