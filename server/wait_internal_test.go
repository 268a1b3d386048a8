package server

import (
	"testing"
	"time"
)

// waitFor polls cond until it holds, failing t after d (the internal
// tests' one poll: CouchDB sessions, ffmetadata).
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
