//go:build !linux

package blobstore

import (
	"os"

	bolt "go.etcd.io/bbolt"
)

// blobOpener opens blob files without following symlinks (see
// open_linux.go; here without openat2, by checking each component).
type blobOpener struct{ dir string }

func newBlobOpener(dir string) (*blobOpener, error) { return &blobOpener{dir: dir}, nil }

func (o *blobOpener) open(rel string) (*os.File, error) { return openNoFollow(o.dir, rel) }

func (o *blobOpener) close() {}

// releaseMap drops the pages of bbolt's memory map of meta.db from the
// resident set where the system allows it (Linux: open_linux.go).
func releaseMap(*bolt.DB, string) {}
