package soak

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/internal/cluster"
)

// Violation is a broken promise. Invariant is the number of the package
// doc's list (1: acknowledged uploads everywhere, bytes verified; 2: no
// deleted or blocked file anywhere, nor served; 3: no temp or partial
// file; 4: queues empty, no node resyncing, the same IDs and states
// everywhere; 5: no complete 200 of wrong bytes; 6: every node's state of
// every ID is the one the model says wins), 0 for another promise of
// API.md.
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
	VDeletedNot404  = "GET of a deleted ID answered neither 404 nor 200"
	VNodeUnreadable = "node state unreadable"

	// Resync and clocks.
	VResyncing     = "node still resyncing after the heal"
	VClockAccepted = "state with a clock beyond max_clock_offset accepted"
	// Blocks.
	VBlockedStored = "blocked file present"
	VBlockedServed = "GET of a blocked ID answered 200"
	VBlockedStatus = "GET of a blocked ID answered another status"
	VBlockMissing  = "blocked ID missing from the deny list"
	VLiftedBack    = "lifted block active again"
	VLiftedRefused = "upload of a lifted ID refused"
	VBlockUnknown  = "block no client made"
	VDenyDiffer    = "nodes disagree on a block"
	// Deletes (Consistency 9).
	VDelete404 = "DELETE of an acknowledged upload answered 404"
	// Identity.
	VReplicasShort = "?replicas=N acknowledged before N replicas held the file"
	// Damaged metadata: the node must refuse to start, naming the fix.
	VMetaRefusal = "damaged meta.db not refused with the runbook's message"
	// Scrub.
	VWrongAfterRepair = "wrong bytes served after the scrubber repaired the blob"
	// The model check (invariant 6): GET /_internal/state/{id}.
	VStateLost        = "acknowledged upload's state lost"
	VStateUndone      = "acknowledged delete's state undone"
	VStateOlder       = "state older than the one acknowledged"
	VStateUnexplained = "live state no acknowledged write explains"
	VStateDiffer      = "replicas disagree on the state"
	VStateUnreadable  = "state unreadable"
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
	// Cache is true for a cache: it need not hold anything, but must
	// not hold a deleted or blocked file, nor wrong bytes.
	Cache bool
	// Tier is true for a tier (Config.Tier): a replica whose disk need
	// not hold every present file (it evicts to the archive), checked on
	// its disk like a cache and on its states like a replica.
	Tier bool
	// Files are the blob files under blobs/, by name.
	Files map[string]FileView
	// Strays are paths under blobs/ that are not blobs/ab/cd/<id>.
	Strays []string
	// Temp are the entries of tmp/.
	Temp []string
	// StatusBlobs is /_status's "blobs", -1 if unknown.
	StatusBlobs int64
	// Unheld are IDs GET /_blobs lists with no file under blobs/ (read
	// only when StatusBlobs disagrees with Files, to name the records
	// behind it).
	Unheld []string
	// Queues are /_status's queue lengths by peer URL.
	Queues map[string]int64
	// Pushers are /_status's cluster.peers[].pusher by peer URL: what
	// the pusher of a queue not empty was doing, for the message.
	Pushers map[string]string
	// Resyncing is /_status's cluster.resyncing (Resync its cluster.resync,
	// if any, for the message).
	Resyncing bool
	Resync    string
	// Err is an error reading the node's state.
	Err error
}

// Check compares what the nodes hold with what the ledger's entries want,
// invariants 1 to 4: every replica holds every present ID; no node, cache
// or replica, holds an absent (deleted, blocked, never acknowledged) one;
// the replicas agree on the unknown ones.
func Check(nodes []NodeView, entries map[string]Entry) []Violation {
	var f findings
	all := map[string][]int{}      // ID -> nodes holding it
	replicas := map[string][]int{} // ID -> replicas holding it
	for _, n := range nodes {
		f.checkNode(n, entries, all, replicas)
	}
	readable := 0
	for _, n := range nodes {
		if n.Err == nil && n.holdsAll() {
			readable++
		}
	}
	for _, id := range sortedIDs(entries) {
		f.checkEntry(id, entries[id], nodes, all[id], replicas[id], readable)
	}
	// IDs that are in no entry and held by some replicas only.
	for _, id := range sortedIDs(replicas) {
		if _, ok := entries[id]; !ok && len(replicas[id]) < readable {
			f.add(4, VDiffer, -1, id, "held by replicas %v only", replicas[id])
		}
	}
	return f
}

// holdsAll reports whether n's disk must hold every present file: a
// replica's, not a cache's or a tier's.
func (n NodeView) holdsAll() bool { return !n.Cache && !n.Tier }

// findings collects violations.
type findings []Violation

// add records a violation of invariant inv.
func (f *findings) add(inv int, kind string, node int, id, format string, args ...any) {
	*f = append(*f, Violation{Invariant: inv, Kind: kind, Node: node, ID: id, Detail: fmt.Sprintf(format, args...)})
}

// checkNode checks what node n holds on its own (invariants 1-4), and
// notes the IDs it holds in all and, for a replica, in replicas.
func (f *findings) checkNode(n NodeView, entries map[string]Entry, all, replicas map[string][]int) {
	if n.Err != nil {
		f.add(4, VNodeUnreadable, n.Index, "", "%v", n.Err)
		return
	}
	for _, id := range sortedIDs(n.Files) {
		file := n.Files[id]
		all[id] = append(all[id], n.Index)
		if n.holdsAll() {
			replicas[id] = append(replicas[id], n.Index)
		}
		if file.Sum != id {
			f.add(1, VWrongOnDisk, n.Index, id, "the file hashes to %s", short(file.Sum))
		}
		if _, ok := entries[id]; !ok {
			f.add(2, VUnknownFile, n.Index, id, "%d bytes", file.Size)
		}
	}
	for _, p := range n.Strays {
		f.add(3, VStray, n.Index, "", "%s", p)
	}
	for _, p := range n.Temp {
		f.add(3, VTemp, n.Index, "", "tmp/%s", p)
	}
	for _, url := range sortedIDs(n.Queues) {
		if q := n.Queues[url]; q != 0 {
			f.add(4, VQueue, n.Index, "", "%d operations queued for %s%s", q, url, pusherNote(n.Pushers[url]))
		}
	}
	if n.StatusBlobs >= 0 && n.StatusBlobs != int64(len(n.Files)) && !(n.Tier && n.StatusBlobs > int64(len(n.Files))) {
		// (A tier records more files than it holds: those it evicted.)
		f.add(4, VStatus, n.Index, "", "/_status says %d blobs, blobs/ holds %d files%s", n.StatusBlobs, len(n.Files), unheld(n.Unheld))
	}
	if n.Resyncing {
		f.add(4, VResyncing, n.Index, "", "/_status: cluster.resyncing true%s", n.Resync)
	}
}

// checkEntry checks the nodes against the model's state of id: held by
// (the nodes in holders, of which replicas are the replicas) where it is
// present, nowhere where it is absent or blocked. readable counts the
// replicas that could be read.
func (f *findings) checkEntry(id string, e Entry, nodes []NodeView, holders, replicas []int, readable int) {
	m := e.Model()
	last := m.Decider
	switch m.State {
	case Present:
		for _, n := range nodes {
			if n.Err != nil || n.Cache {
				continue
			}
			file, ok := n.Files[id]
			if !ok && n.Tier {
				continue // evicted: its record is checked with the states
			}
			switch {
			case !ok:
				f.add(1, VLostUpload, n.Index, id, "file %d, %d bytes, acknowledged at event %d", e.File.Index, e.File.Size, last.Seq)
			case file.Size != e.File.Size:
				f.add(1, VWrongSize, n.Index, id, "%d bytes, want %d", file.Size, e.File.Size)
			}
		}
	case Absent:
		for _, n := range holders {
			switch {
			case last != nil && last.Kind == OpBlock:
				f.add(2, VBlockedStored, n, id, "file %d, blocked at event %d", e.File.Index, last.Seq)
			case last != nil:
				f.add(2, VUndoneDelete, n, id, "file %d, deleted at event %d", e.File.Index, last.Seq)
			default:
				f.add(0, VRefusedStored, n, id, "file %d", e.File.Index)
			}
		}
	case Unknown:
		if h := replicas; len(h) > 0 && len(h) < readable {
			f.add(4, VDiffer, -1, id, "file %d (state unknown) held by replicas %v only", e.File.Index, h)
		}
	}
	if m.Deny == Blocked && m.State != Absent {
		for _, n := range holders {
			f.add(2, VBlockedStored, n, id, "file %d, blocked at event %d", e.File.Index, m.DenyDecider.Seq)
		}
	}
}

// NodeState is a node's answer to GET /_internal/state/{id}.
type NodeState struct {
	// Code is the HTTP status: 200 (a record), 404 (no record), another
	// (an error), 0 (not reached: Err says why).
	Code  int
	Stamp Stamp
	Held  bool
	// Evicted: a tier evicted the bytes to its archive (not held).
	Evicted bool
	Err     string
}

func (s NodeState) String() string {
	switch s.Code {
	case 200:
		if s.Held {
			return s.Stamp.String() + ", held"
		}
		return s.Stamp.String() + ", not held"
	case 404:
		return "no record"
	case 0:
		return "unreachable: " + s.Err
	}
	return fmt.Sprintf("%d %s", s.Code, s.Err)
}

// CheckStates is the model check (invariant 6): states[id][i] is node i's
// answer for id; cache[i] marks the caches, whose states are not held to
// the model (they keep what they please; their disks and answers are
// checked elsewhere). On every replica:
//
//   - a present ID has a live state, held, no older than the state the
//     node acknowledging the upload showed;
//   - an ID absent by an acknowledged delete or block has a deleted state
//     (or none: a tombstone forgotten), no older than the acknowledged one;
//   - an ID never acknowledged has no live state;
//   - an unknown ID is live and held everywhere, or nowhere;
//   - every replica with a record has the same (deleted, clock, node).
//
// names turns a node identity into something readable (a node index).
func CheckStates(states map[string][]NodeState, cache []bool, entries map[string]Entry, names func(string) string) []Violation {
	sc := &stateCheck{cache: cache, names: names}
	unreadable := map[int][]string{} // node -> IDs
	for _, id := range sortedIDs(states) {
		e, ok := entries[id]
		if !ok {
			continue
		}
		sc.checkID(id, e, states[id], unreadable)
	}
	for _, i := range slices.Sorted(maps.Keys(unreadable)) {
		ids := unreadable[i]
		s := states[ids[0]][i]
		sc.add(VStateUnreadable, i, "", "%d IDs, the first %s: %s", len(ids), short(ids[0]), s)
	}
	return sc.out
}

// stateCheck is one CheckStates.
type stateCheck struct {
	out   findings
	cache []bool
	names func(string) string
}

// add records a violation of invariant 6.
func (sc *stateCheck) add(kind string, node int, id, format string, args ...any) {
	sc.out.add(6, kind, node, id, format, args...)
}

// show shows s, naming its node.
func (sc *stateCheck) show(s NodeState) string {
	t := s.String()
	if s.Code == 200 {
		t = strings.Replace(t, shortNode(s.Stamp.Node), sc.names(s.Stamp.Node), 1)
	}
	return t
}

// stampOf shows the state w left, naming its node.
func (sc *stateCheck) stampOf(w *Write) string {
	if w == nil || w.Stamp == nil {
		return "state not read"
	}
	return strings.Replace(w.Stamp.String(), shortNode(w.Stamp.Node), sc.names(w.Stamp.Node), 1)
}

// checkID checks the replicas' states ns of id against the model, and
// against each other; it notes in unreadable the replicas that did not
// answer.
func (sc *stateCheck) checkID(id string, e Entry, ns []NodeState, unreadable map[int][]string) {
	m := e.Model()
	var records []int // replicas with a record
	live, dead := 0, 0
	for i, s := range ns {
		if sc.cache[i] {
			continue
		}
		switch s.Code {
		case 200:
			records = append(records, i)
			if s.Stamp.Deleted {
				dead++
			} else {
				live++
			}
		case 404:
			dead++
		default:
			unreadable[i] = append(unreadable[i], id)
			continue
		}
		sc.checkState(id, e, m, i, s)
	}
	if m.State == Unknown && live > 0 && dead > 0 {
		var parts []string
		for i, s := range ns {
			if !sc.cache[i] {
				parts = append(parts, fmt.Sprintf("node %d: %s", i, sc.show(s)))
			}
		}
		sc.add(VStateDiffer, -1, id, "file %d (unknown): some replicas live, some not: %s", e.File.Index, strings.Join(parts, "; "))
		return
	}
	for _, i := range records {
		a, b := ns[records[0]].Stamp, ns[i].Stamp
		if a != b {
			var parts []string
			for _, k := range records {
				parts = append(parts, fmt.Sprintf("node %d: %s", k, sc.show(ns[k])))
			}
			sc.add(VStateDiffer, -1, id, "file %d: %s", e.File.Index, strings.Join(parts, "; "))
			break
		}
	}
}

// checkState checks replica i's state s of id (a record, or none) against
// the model m.
func (sc *stateCheck) checkState(id string, e Entry, m Model, i int, s NodeState) {
	dec := m.Decider
	switch {
	case m.State == Present && (s.Code != 200 || s.Stamp.Deleted || !s.Held):
		sc.add(VStateLost, i, id, "file %d: %s; the model wants the upload of event %d (%s)", e.File.Index, sc.show(s), dec.Seq, sc.stampOf(dec))
	case m.State == Present && dec.Stamp != nil && s.Stamp.Less(*dec.Stamp):
		sc.add(VStateOlder, i, id, "file %d: %s, older than the upload acknowledged at event %d (%s)", e.File.Index, sc.show(s), dec.Seq, sc.stampOf(dec))
	case m.State == Absent && dec != nil && s.Code == 200 && !s.Stamp.Deleted:
		sc.add(VStateUndone, i, id, "file %d: %s; the model wants the %s of event %d (%s)", e.File.Index, sc.show(s), dec.Kind, dec.Seq, sc.stampOf(dec))
	case m.State == Absent && dec != nil && s.Code == 200 && dec.Stamp != nil && dec.Stamp.Deleted && s.Stamp.Less(*dec.Stamp):
		sc.add(VStateOlder, i, id, "file %d: %s, older than the %s acknowledged at event %d (%s)", e.File.Index, sc.show(s), dec.Kind, dec.Seq, sc.stampOf(dec))
	case m.State == Absent && dec == nil && s.Code == 200 && !s.Stamp.Deleted:
		sc.add(VStateUnexplained, i, id, "file %d: %s; no upload of it was acknowledged", e.File.Index, sc.show(s))
	}
}

// DenyView is a node's active deny list (GET /_deny): status by ID.
type DenyView struct {
	Index   int
	Cache   bool
	Entries map[string]int
	Err     error
}

// CheckDeny compares every node's deny list, caches included, with the
// model: a blocked ID is on every list with its status; a lifted one (or
// one never blocked) on none; an unknown one on all or none.
func CheckDeny(lists []DenyView, entries map[string]Entry) []Violation {
	var out []Violation
	add := func(kind string, node int, id, format string, args ...any) {
		out = append(out, Violation{Invariant: 2, Kind: kind, Node: node, ID: id, Detail: fmt.Sprintf(format, args...)})
	}
	readable := 0
	listed := map[string][]int{}
	for _, l := range lists {
		if l.Err != nil {
			add(VNodeUnreadable, l.Index, "", "GET /_deny: %v", l.Err)
			continue
		}
		readable++
		for id := range l.Entries {
			listed[id] = append(listed[id], l.Index)
		}
	}
	for _, id := range sortedIDs(listed) {
		if _, ok := entries[id]; !ok {
			add(VBlockUnknown, -1, id, "listed by nodes %v", listed[id])
		}
	}
	for _, id := range sortedIDs(entries) {
		e := entries[id]
		m := e.Model()
		switch m.Deny {
		case Blocked:
			for _, l := range lists {
				if l.Err != nil {
					continue
				}
				st, ok := l.Entries[id]
				switch {
				case !ok:
					add(VBlockMissing, l.Index, id, "file %d, blocked at event %d", e.File.Index, m.DenyDecider.Seq)
				case st != BlockStatus:
					add(VBlockMissing, l.Index, id, "file %d listed with status %d, blocked with %d at event %d", e.File.Index, st, BlockStatus, m.DenyDecider.Seq)
				}
			}
		case Lifted:
			for _, n := range listed[id] {
				add(VLiftedBack, n, id, "file %d, lifted at event %d, listed again", e.File.Index, m.DenyDecider.Seq)
			}
		case NotBlocked:
			for _, n := range listed[id] {
				add(VBlockUnknown, n, id, "file %d was never blocked", e.File.Index)
			}
		case DenyUnknown:
			if n := len(listed[id]); n > 0 && n < readable {
				add(VDenyDiffer, -1, id, "file %d (block unknown) listed by nodes %v only", e.File.Index, listed[id])
			}
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

// unheld names the records listed without a file, for a message.
func unheld(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	names := make([]string, 0, 5)
	for _, id := range ids[:min(len(ids), 5)] {
		names = append(names, short(id))
	}
	return fmt.Sprintf("; listed without a file: %s", strings.Join(names, ", "))
}

// fromStatus fills in what v takes from the node's /_status.
func (v *NodeView) fromStatus(st *api.Status) {
	v.StatusBlobs = st.Blobs
	for url, q := range st.Queues {
		v.Queues[url] = q.Length
	}
	v.Pushers = pusherStates(st)
	v.Resyncing, v.Resync = resyncing(st)
}

// pusherNote names what a queue's pusher was doing, if known.
func pusherNote(state string) string {
	if state == "" {
		return ""
	}
	return " (pusher: " + state + ")"
}

// pusherStates returns /_status's pusher state by peer URL, with the
// last push's error if it failed.
func pusherStates(st *api.Status) map[string]string {
	out := map[string]string{}
	if st.Cluster != nil {
		for _, p := range st.Cluster.Peers {
			out[p.URL] = p.Pusher
			if p.PushError != "" {
				out[p.URL] += "; last error: " + p.PushError
			}
		}
	}
	return out
}
