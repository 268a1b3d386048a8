package couchdb_test

import (
	"os"
	"sync"
	"testing"

	"github.com/dtfc/dtfc/internal/pouchtest"
)

// The CouchDB-API server of these tests: pouchdb-server (internal/pouchtest) (CouchDB's HTTP API
// over PouchDB with a LevelDB store), installed with npm into a cache
// directory outside the repository. .ci/run installs it; locally:
//
//	npm install --prefix ~/.cache/dtfc-node-tools pouchdb-server@4.2.0
//
// Fidelity, checked by hand and by these tests, for what the migration
// uses: attachments (stubs with digest "md5-<base64>" and length, streamed
// GET, standalone and inline PUT), _changes (normal and longpoll with
// heartbeat, limit, include_docs, last_seq), _local documents (revisions
// "0-N", 409 on a stale _rev) and 409 on stale document updates all behave
// as in CouchDB. Deviations: sequences are integers (CouchDB 2+ has opaque
// strings: the migrator treats both as opaque JSON), att_encoding_info is
// ignored (nothing is stored compressed), documents are answered with
// Content-Type text/plain, and a body needs Content-Type application/json
// to be parsed. A standalone attachment PUT is slow (about 3 MB/s), so the
// tests create attachments inline with _bulk_docs.
type pouch = pouchtest.Server

// startPouch starts a pouchdb-server for t, stopped in t.Cleanup; the
// test is skipped, saying how to install it, if it is not installed.
func startPouch(t *testing.T, inMemory bool) *pouch { return pouchtest.ForTest(t, inMemory) }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// shared is one in-memory pouchdb-server for the tests that need no
// restart, each in its own database; TestMain stops it.
var shared struct {
	once sync.Once
	p    *pouch
	err  error
	dir  string
}

func sharedPouch(t *testing.T) *pouch {
	t.Helper()
	if _, msg := pouchtest.Binary(); msg != "" {
		t.Skip(msg)
	}
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "dtfc-pouch-"); shared.err != nil {
			return
		}
		if shared.p, shared.err = pouchtest.New(shared.dir, true); shared.err == nil {
			shared.err = shared.p.Launch()
		}
	})
	if shared.err != nil {
		t.Fatalf("pouchdb-server: %v", shared.err)
	}
	return shared.p
}

func stopShared() {
	if shared.p != nil {
		shared.p.Shutdown()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}
