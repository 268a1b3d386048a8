//go:build !linux

package blobstore

import (
	"errors"
	"os"
)

// canSyncFS is false where syncfs(2) does not exist: a batch fsyncs each
// file and each directory it changed instead (batch.go).
func canSyncFS() bool { return false }

func syncFS(string) error { return errors.New("syncfs: not supported here") }

func writebackErr(*os.File) error { return nil }
