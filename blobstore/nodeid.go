package blobstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// nodeIDFile holds the store's node identity beside meta.db, so that the
// identity outlives the metadata: a rebuild of a lost or damaged meta.db
// keeps it, and a meta.db that names another node is recognised as not
// this store's own.
const nodeIDFile = "node-id"

// errBadNodeID means the node-id file exists but holds no valid identity.
var errBadNodeID = errors.New("blobstore: node-id holds no valid node identity")

// readNodeID returns the identity in dir's node-id file, "" if there is
// no such file, or errBadNodeID.
func readNodeID(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, nodeIDFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("blobstore: read %s: %w", nodeIDFile, err)
	}
	id := strings.TrimSpace(string(b))
	if !validNodeID(id) {
		return "", fmt.Errorf("%w (%s: %q)", errBadNodeID, filepath.Join(dir, nodeIDFile), truncate(id, 40))
	}
	return id, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// validNodeID accepts what this store generates (16 hex digits) and any
// other short printable token an older store may hold.
func validNodeID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// newNodeID returns a random identity.
func newNodeID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("blobstore: new node identity: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// writeNodeID writes id to dir's node-id file durably: a temp file in
// tmpDir (same filesystem, swept at every open), fsync, rename, fsync of
// the directory.
func writeNodeID(dir, tmpDir, id string) (err error) {
	f, err := os.CreateTemp(tmpDir, "node-id-*")
	if err != nil {
		return diskErr("write node-id", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, nodeIDFile))
	}
	if err == nil {
		err = syncDir(dir)
	}
	return diskErr("write node-id", err)
}
