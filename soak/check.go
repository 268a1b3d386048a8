package soak

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dtfc/dtfc/internal/cluster"
)

// Violation is a broken promise. Invariant is the number of the issue's
// list (1: acknowledged uploads everywhere, bytes verified; 2: no deleted
// file anywhere; 3: no temp or partial file; 4: queues empty, same IDs
// everywhere; 5: no complete 200 of wrong bytes), 0 for another promise
// of API.md.
type Violation struct {
	Invariant int
	Kind      string
	Node      int // -1: not one node's
	ID        string
	Detail    string
}

// Kinds of violations.
const (
	VLostUpload     = "acknowledged upload missing"
	VWrongSize      = "blob of the wrong size"
	VWrongOnDisk    = "blob file whose bytes do not hash to its name"
	VUndoneDelete   = "deleted file present"
	VRefusedStored  = "file stored though no upload of it was acknowledged or pending"
	VUnknownFile    = "file no client uploaded"
	VTemp           = "temp file left"
	VStray          = "stray file under blobs/"
	VQueue          = "replication queue not empty"
	VStatus         = "/_status disagrees with the disk"
	VDiffer         = "nodes hold different IDs"
	VNotConverged   = "not converged"
	VWrongServed    = "complete 200 of wrong bytes"
	VWrongRange     = "206 of wrong bytes"
	VWrongAnswer    = "upload answered another ID or size"
	VCrash          = "node exited on its own"
	VDeletedServed  = "GET of a deleted ID answered 200"
	VNodeUnreadable = "node state unreadable"
)

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invariant %d: %s", v.Invariant, v.Kind)
	if v.Node >= 0 {
		fmt.Fprintf(&b, " on node %d", v.Node)
	}
	if v.ID != "" {
		fmt.Fprintf(&b, ": %s", short(v.ID))
	}
	if v.Detail != "" {
		fmt.Fprintf(&b, " (%s)", v.Detail)
	}
	return b.String()
}

// short abbreviates an ID for logs.
func short(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

// FileView is one blob file as found on a node's disk.
type FileView struct {
	Size int64
	// Sum is the SHA-512 of the file's bytes, hex.
	Sum string
}

// NodeView is what the checker sees of one node after convergence.
type NodeView struct {
	Index int
	// Files are the blob files under blobs/, by name.
	Files map[string]FileView
	// Strays are paths under blobs/ that are not blobs/ab/cd/<id>.
	Strays []string
	// Temp are the entries of tmp/.
	Temp []string
	// StatusBlobs is /_status's "blobs", -1 if unknown.
	StatusBlobs int64
	// Queues are /_status's queue lengths by peer URL.
	Queues map[string]int64
	// Err is an error reading the node's state.
	Err error
}

// Check compares what the nodes hold with what the ledger's entries want,
// invariants 1 to 4.
func Check(nodes []NodeView, entries map[string]Entry) []Violation {
	var out []Violation
	add := func(inv int, kind string, node int, id, format string, args ...any) {
		out = append(out, Violation{Invariant: inv, Kind: kind, Node: node, ID: id, Detail: fmt.Sprintf(format, args...)})
	}
	all := map[string][]int{} // ID -> nodes holding it
	for _, n := range nodes {
		if n.Err != nil {
			add(4, VNodeUnreadable, n.Index, "", "%v", n.Err)
			continue
		}
		for _, id := range sortedIDs(n.Files) {
			f := n.Files[id]
			all[id] = append(all[id], n.Index)
			if f.Sum != id {
				add(1, VWrongOnDisk, n.Index, id, "the file hashes to %s", short(f.Sum))
			}
			if _, ok := entries[id]; !ok {
				add(2, VUnknownFile, n.Index, id, "%d bytes", f.Size)
			}
		}
		for _, p := range n.Strays {
			add(3, VStray, n.Index, "", "%s", p)
		}
		for _, p := range n.Temp {
			add(3, VTemp, n.Index, "", "tmp/%s", p)
		}
		for _, url := range sortedIDs(n.Queues) {
			if q := n.Queues[url]; q != 0 {
				add(4, VQueue, n.Index, "", "%d operations queued for %s", q, url)
			}
		}
		if n.StatusBlobs >= 0 && n.StatusBlobs != int64(len(n.Files)) {
			add(4, VStatus, n.Index, "", "/_status says %d blobs, blobs/ holds %d files", n.StatusBlobs, len(n.Files))
		}
	}
	readable := 0
	for _, n := range nodes {
		if n.Err == nil {
			readable++
		}
	}
	for _, id := range sortedIDs(entries) {
		e := entries[id]
		want, last := e.Want()
		holders := all[id]
		switch want {
		case Present:
			for _, n := range nodes {
				if n.Err != nil {
					continue
				}
				f, ok := n.Files[id]
				switch {
				case !ok:
					add(1, VLostUpload, n.Index, id, "file %d, %d bytes, acknowledged at event %d", e.File.Index, e.File.Size, last.Seq)
				case f.Size != e.File.Size:
					add(1, VWrongSize, n.Index, id, "%d bytes, want %d", f.Size, e.File.Size)
				}
			}
		case Absent:
			for _, n := range holders {
				if last != nil {
					add(2, VUndoneDelete, n, id, "file %d, deleted at event %d", e.File.Index, last.Seq)
				} else {
					add(0, VRefusedStored, n, id, "file %d", e.File.Index)
				}
			}
		case Unknown:
			if len(holders) > 0 && len(holders) < readable {
				add(4, VDiffer, -1, id, "file %d (state unknown) held by nodes %v only", e.File.Index, holders)
			}
		}
	}
	// IDs that are in no entry and held by some nodes only.
	for _, id := range sortedIDs(all) {
		if _, ok := entries[id]; !ok && len(all[id]) < readable {
			add(4, VDiffer, -1, id, "held by nodes %v only", all[id])
		}
	}
	return out
}

// idPath matches a blob's path under blobs/: ab/cd/<id starting abcd>.
var idPath = regexp.MustCompile(`^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{128})$`)

// hashCache remembers the files already hashed, by path, size and
// modification time: a blob file is never written in place, so a file
// with the same stamp has the same bytes.
type hashCache map[string]hashStamp

type hashStamp struct {
	size  int64
	mtime time.Time
	sum   string
}

// ScanNode reads a node's basedir: every file under blobs/ (hashed,
// unless the cache knows it), stray entries there, and the entries of
// tmp/. It returns the bytes it hashed.
func ScanNode(basedir string, cache hashCache) (files map[string]FileView, strays, temp []string, hashed int64, err error) {
	files = map[string]FileView{}
	root := filepath.Join(basedir, "blobs")
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root && os.IsNotExist(err) {
				return filepath.SkipDir
			}
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			parts := strings.Split(rel, "/")
			ok := rel == "." || (len(parts) <= 2 && len(parts[len(parts)-1]) == 2 && isHex(parts[len(parts)-1]))
			if !ok {
				strays = append(strays, "blobs/"+rel+"/")
				return filepath.SkipDir
			}
			return nil
		}
		m := idPath.FindStringSubmatch(rel)
		if m == nil || m[3][:2] != m[1] || m[3][2:4] != m[2] || !d.Type().IsRegular() {
			strays = append(strays, "blobs/"+rel)
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := cache[path]
		if st.size != fi.Size() || !st.mtime.Equal(fi.ModTime()) || st.sum == "" {
			sum, err := cluster.HashFile(path)
			if err != nil {
				return err
			}
			hashed += fi.Size()
			st = hashStamp{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
			cache[path] = st
		}
		files[m[3]] = FileView{Size: fi.Size(), Sum: st.sum}
		return nil
	})
	if err != nil {
		return nil, nil, nil, hashed, err
	}
	entries, terr := os.ReadDir(filepath.Join(basedir, "tmp"))
	if terr != nil && !os.IsNotExist(terr) {
		return nil, nil, nil, hashed, terr
	}
	for _, e := range entries {
		temp = append(temp, e.Name())
	}
	sort.Strings(strays)
	return files, strays, temp, hashed, nil
}

func isHex(s string) bool {
	return s != "" && !slices.ContainsFunc([]byte(s), func(c byte) bool {
		return !('0' <= c && c <= '9' || 'a' <= c && c <= 'f')
	})
}
