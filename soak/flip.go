package soak

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dtfc/dtfc/internal/cluster"
)

// smallBlob is the size up to which a node serves a blob from memory
// (server.smallBlob): such a blob is hashed before it is kept there
// (spec 11), so its bytes are never served wrong, even before the
// scrubber found a corruption on disk. A larger blob is served from its
// file as it is: API.md promises right bytes only once the scrubber
// repaired it (Consistency 5), so a read of it from its own node before
// then is excused.
const smallBlob = 16 << 10

// flipKey names a flipped blob: a node and an ID.
type flipKey struct {
	node int
	id   string
}

// flip is a byte flipped in a blob file on a node's disk.
type flip struct {
	file  Content
	at    time.Time
	small bool
	// repaired is when the file was seen hashing right again (or gone
	// where it may be gone); zero until then.
	repaired time.Time
	how      string
}

// flip flips a byte of one blob file of ev.Node, chosen by ev.Pick among
// those present of the wanted size (test goroutine). A small one is read
// back through the node at once: it must not come back wrong. It
// reports whether a file was flipped.
func (r *Runner) flip(ev Event, line *Line) bool {
	n := r.c.Nodes[ev.Node]
	entries := r.ledger.Entries()
	type cand struct {
		id   string
		size int64
	}
	var cands []cand
	root := filepath.Join(n.Basedir, "blobs")
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		e, ok := entries[d.Name()]
		if !ok {
			return nil
		}
		fi, err := d.Info()
		if err != nil || fi.Size() != e.File.Size || fi.Size() == 0 {
			return nil
		}
		if small := fi.Size() <= smallBlob; small == ev.Small && fi.Size() <= 4<<20 {
			cands = append(cands, cand{d.Name(), fi.Size()})
		}
		return nil
	})
	if len(cands) == 0 {
		line.Result = "skipped: no blob file of that size to flip"
		return false
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].id < cands[j].id })
	c := cands[ev.Pick%uint64(len(cands))]
	off := int64((ev.Pick >> 20) % uint64(c.size))
	path := filepath.Join(root, c.id[:2], c.id[2:4], c.id)
	if err := flipByte(path, off); err != nil {
		line.Result = fmt.Sprintf("skipped: %v", err)
		return false
	}
	e := entries[c.id]
	line.File, line.ID, line.Size = e.File.Index, c.id, c.size
	line.Result = fmt.Sprintf("byte %d of node %d's blob file flipped", off, ev.Node)
	f := &flip{file: e.File, at: time.Now(), small: ev.Small}
	r.flipsMu.Lock()
	r.flips[flipKey{ev.Node, c.id}] = f
	r.flipsMu.Unlock()
	if !ev.Small || !n.Running() {
		return true
	}
	// Read it through the node right away (a miss of its memory, most
	// likely): never a complete 200 of wrong bytes.
	rl := Line{Round: ev.Round, Actor: "probe", Kind: OpRead, Node: ev.Node, Peer: -1, File: e.File.Index, ID: c.id, Size: c.size}
	begin := time.Now()
	rl.T = r.log.Since(begin)
	ctx, cancel := context.WithTimeout(context.Background(), checkReadTimeout)
	defer cancel()
	_, res, v := r.read(ctx, n.URL, c.id, Op{Kind: OpRead, File: e.File, NoPeer: true}, &rl)
	rl.Detail = strings.TrimSpace("right after the flip " + rl.Detail)
	rl.Dur, rl.Result = time.Since(begin), res
	seq := r.log.Add(rl)
	if v != nil {
		v.Node = ev.Node
		v.Detail += fmt.Sprintf(", read right after its file was flipped on disk (a blob served from memory), event %d", seq)
		r.report.Violate(*v)
	}
	return true
}

// flipByte XORs the byte at off of the file at path with 0xFF, in place.
func flipByte(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		f.Close()
		return err
	}
	b[0] ^= 0xFF
	if _, err := f.WriteAt(b[:], off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// flipsPending says which flipped blob is not repaired yet, or "".
func (r *Runner) flipsPending() string {
	if pending := r.refreshFlips(); len(pending) > 0 {
		return pending[0]
	}
	return ""
}

// refreshFlips marks the flipped blobs repaired since the last look and
// describes those that are not: one repaired hashes right again; one
// gone is repaired on a cache (it fetches it again when read) or for an
// ID that need not be present.
func (r *Runner) refreshFlips() (pending []string) {
	r.flipsMu.Lock()
	defer r.flipsMu.Unlock()
	var entries map[string]Entry
	keys := make([]flipKey, 0, len(r.flips))
	for k := range r.flips {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].node < keys[j].node || keys[i].node == keys[j].node && keys[i].id < keys[j].id
	})
	for _, k := range keys {
		f := r.flips[k]
		if !f.repaired.IsZero() {
			continue
		}
		path := filepath.Join(r.c.Nodes[k.node].Basedir, "blobs", k.id[:2], k.id[2:4], k.id)
		sum, err := cluster.HashFile(path)
		switch {
		case err == nil && sum == k.id:
			f.repaired, f.how = time.Now(), "repaired"
			continue
		case errors.Is(err, fs.ErrNotExist):
			if entries == nil {
				entries = r.ledger.Entries()
			}
			e := entries[k.id]
			// (A cache's or a tier's blob may be evicted.)
			if want, _ := e.Want(); r.cache[k.node] || r.tier[k.node] || want != Present {
				f.repaired, f.how = time.Now(), "removed"
				continue
			}
			pending = append(pending, fmt.Sprintf("node %d: the blob of file %d, flipped %v ago, is gone and not fetched again yet",
				k.node, f.file.Index, time.Since(f.at).Round(100*time.Millisecond)))
			continue
		}
		pending = append(pending, fmt.Sprintf("node %d: the blob of file %d, flipped %v ago, is not repaired yet",
			k.node, f.file.Index, time.Since(f.at).Round(100*time.Millisecond)))
	}
	return pending
}

// excused reports whether a read of id from node that came back wrong is
// excused: the node's own copy was flipped and not yet seen repaired, the
// blob is not one served from memory, and the bytes came from the node's
// disk (res says "(local)").
func (r *Runner) excused(node int, id string, size int64, res string) bool {
	r.flipsMu.Lock()
	f := r.flips[flipKey{node, id}]
	r.flipsMu.Unlock()
	return f != nil && f.repaired.IsZero() && size > smallBlob && strings.Contains(res, "(local)")
}

// takeFlips returns the round's flips and forgets them.
func (r *Runner) takeFlips() map[flipKey]*flip {
	r.flipsMu.Lock()
	defer r.flipsMu.Unlock()
	f := r.flips
	r.flips = map[flipKey]*flip{}
	return f
}
