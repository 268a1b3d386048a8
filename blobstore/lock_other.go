//go:build !unix

package blobstore

import "time"

// lockDir does nothing where flock is unavailable; bbolt's own lock on
// meta.db still keeps two stores apart.
func lockDir(string, time.Duration) (func(), error) { return func() {}, nil }
