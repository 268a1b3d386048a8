package server

import (
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/diskspace"
)

// Disk describes the filesystem holding the node's store, from statfs.
type Disk = api.Disk

// DirStore is implemented by a store that lives in a directory
// (*blobstore.Store): the status reports the free space of its filesystem.
type DirStore interface {
	Dir() string
}

var _ DirStore = (*blobstore.Store)(nil)

// diskOf measures the filesystem holding dir. ok is false where statfs is
// not available (see disk_statfs.go) or fails.
func diskOf(dir string) (d Disk, ok bool) {
	free, total, err := diskspace.Of(dir)
	if err != nil {
		return Disk{}, false
	}
	return Disk{Dir: dir, FreeBytes: free, TotalBytes: total}, true
}
