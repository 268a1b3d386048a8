package server

import (
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/diskspace"
)

// Disk describes the filesystem holding the node's store, from statfs.
type Disk struct {
	// Dir is the directory measured: the store's base directory.
	Dir string `json:"dir"`
	// FreeBytes is what an unprivileged writer can still use.
	FreeBytes uint64 `json:"free_bytes"`
	// TotalBytes is the filesystem's size.
	TotalBytes uint64 `json:"total_bytes"`
}

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
