package soak

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Outcome is what a client can tell of a write from its answer.
type Outcome int

const (
	// Acked: the node acknowledged it (upload 200/201, or 504 after
	// ?replicas=N, which keeps the file; delete, block or lift 200).
	Acked Outcome = iota
	// Refused: it was certainly not applied (the connection was refused;
	// a 4xx answer without ?replicas; 507; a delete's or a lift's 404).
	Refused
	// Maybe: it may or may not have been applied (a timeout, a reset
	// connection, another 5xx).
	Maybe
)

func (o Outcome) String() string {
	return [...]string{"acked", "refused", "maybe"}[o]
}

// Want is the state an ID must have once the cluster has converged.
type Want int

const (
	// Absent: never stored, or its last acknowledged operation is a
	// delete or a block, with nothing possibly applied after it.
	Absent Want = iota
	// Present: its last acknowledged operation is an upload, with
	// nothing possibly applied after it: on every replica, bytes
	// verified.
	Present
	// Unknown: an operation after the last acknowledged one may have
	// been applied (an upload or delete whose answer never came), so
	// either state is right, but the same on every replica, and if
	// present its bytes must hash to the ID.
	Unknown
)

func (w Want) String() string {
	return [...]string{"absent", "present", "unknown"}[w]
}

// DenyWant is what an ID's entry on the deny list must be once the
// cluster has converged.
type DenyWant int

const (
	// NotBlocked: never blocked (no block was acknowledged or pending).
	NotBlocked DenyWant = iota
	// Blocked: the last acknowledged block is not followed by an
	// acknowledged lift: every node, caches included, lists it and
	// answers its status, and no node holds its bytes.
	Blocked
	// Lifted: the last acknowledged lift follows the last block: no node
	// lists it, and it can be uploaded again.
	Lifted
	// DenyUnknown: a block or lift whose answer never came: either, but
	// the same on every node.
	DenyUnknown
)

func (d DenyWant) String() string {
	return [...]string{"not blocked", "blocked", "lifted", "unknown"}[d]
}

// Stamp is the state a node showed for an ID right after acknowledging
// a write of it (GET /_internal/state/{id}): the write's own state, as
// the worker is the only one writing the ID.
type Stamp struct {
	Deleted bool
	Clock   uint64
	Node    string // the node's identity
}

// Less orders stamps as the cluster does (last writer wins): by clock,
// then by node identity.
func (s Stamp) Less(o Stamp) bool {
	if s.Clock != o.Clock {
		return s.Clock < o.Clock
	}
	return s.Node < o.Node
}

// clockTime is the wall-clock part of a hybrid logical clock reading (its
// upper 48 bits are Unix milliseconds).
func clockTime(c uint64) time.Time { return time.UnixMilli(int64(c >> 16)) }

func (s Stamp) String() string {
	what := "upload"
	if s.Deleted {
		what = "delete"
	}
	return fmt.Sprintf("%s at %s+%d by %s", what, clockTime(s.Clock).UTC().Format("15:04:05.000"), s.Clock&0xffff, shortNode(s.Node))
}

// shortNode abbreviates a node identity.
func shortNode(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// Write is one operation on an ID, as the ledger keeps it.
type Write struct {
	// Kind is OpUpload (re-uploads too), OpDelete, OpBlock or OpLift.
	Kind    Kind
	Outcome Outcome
	// Resolved marks the ledger's own entry after a round's check: an
	// Unknown ID takes the state the converged cluster shows.
	Resolved bool
	Seq      int // the event's number in the log
	// Stamp is the state the node showed right after acknowledging it,
	// if it could be read.
	Stamp *Stamp
}

// Deletes reports whether the write removes the ID's bytes (a delete or
// a block).
func (w Write) Deletes() bool { return w.Kind == OpDelete || w.Kind == OpBlock }

// Entry is everything the ledger knows of one ID.
type Entry struct {
	ID     string
	File   Content
	Worker int // -1: the fault goroutine's probes
	Writes []Write
}

// Model is what the writes of an ID say the converged cluster must show.
type Model struct {
	State Want
	// Decider is the acknowledged write that decides State (nil: none,
	// or State is Unknown).
	Decider *Write
	Deny    DenyWant
	// DenyDecider is the acknowledged block or lift that decides Deny.
	DenyDecider *Write
}

// Model folds the entry's writes, in the worker's order, into what must
// hold after convergence:
//
//   - an acknowledged upload makes the ID present, a delete or block
//     absent; a lift leaves the state alone (the bytes went with the
//     block);
//   - an upload acknowledged while the model says blocked makes the state
//     unknown: the node that took it had not heard of the block, and
//     whether the block removes it depends on how the block and its lift
//     reach that node;
//   - a write whose answer never came makes what it would change unknown
//     (a maybe delete of an absent ID changes nothing);
//   - a Resolved write fixes the state to what the cluster showed.
func (e *Entry) Model() Model {
	m := Model{State: Absent, Deny: NotBlocked}
	for i := range e.Writes {
		w := &e.Writes[i]
		if w.Resolved {
			switch w.Kind {
			case OpBlock:
				m.Deny, m.DenyDecider = Blocked, w
			case OpLift:
				m.Deny, m.DenyDecider = Lifted, w
			case OpDelete:
				m.State, m.Decider = Absent, w
			default:
				m.State, m.Decider = Present, w
			}
			continue
		}
		switch w.Outcome {
		case Acked:
			switch w.Kind {
			case OpDelete:
				m.State, m.Decider = Absent, w
			case OpBlock:
				m.State, m.Decider = Absent, w
				m.Deny, m.DenyDecider = Blocked, w
			case OpLift:
				m.Deny, m.DenyDecider = Lifted, w
			default:
				if m.Deny == Blocked || m.Deny == DenyUnknown {
					m.State, m.Decider = Unknown, nil
				} else {
					m.State, m.Decider = Present, w
				}
			}
		case Maybe:
			switch w.Kind {
			case OpDelete:
				if m.State != Absent {
					m.State, m.Decider = Unknown, nil
				}
			case OpBlock:
				if m.State != Absent {
					m.State, m.Decider = Unknown, nil
				}
				if m.Deny != Blocked {
					m.Deny, m.DenyDecider = DenyUnknown, nil
				}
			case OpLift:
				if m.Deny == Blocked {
					m.Deny, m.DenyDecider = DenyUnknown, nil
				}
			default:
				m.State, m.Decider = Unknown, nil
			}
		}
	}
	return m
}

// Want is the state the entry's ID must have after convergence, and the
// write that decides it (nil if none was acknowledged).
func (e *Entry) Want() (Want, *Write) {
	m := e.Model()
	return m.State, m.Decider
}

// Ledger records every write in the order its worker issued it (one
// worker per ID, so this is the order of the operations on the ID).
// Safe for concurrent use.
type Ledger struct {
	mu      sync.Mutex
	entries map[string]*Entry
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{entries: map[string]*Entry{}} }

// Record appends a write of id.
func (l *Ledger) Record(id string, file Content, worker int, w Write) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[id]
	if e == nil {
		e = &Entry{ID: id, File: file, Worker: worker}
		l.entries[id] = e
	}
	e.Writes = append(e.Writes, w)
}

// Resolve fixes an Unknown ID to the state the converged cluster shows,
// so later rounds hold it to that state.
func (l *Ledger) Resolve(id string, present bool, seq int) {
	kind := OpDelete
	if present {
		kind = OpUpload
	}
	l.resolve(id, kind, seq)
}

// ResolveDeny fixes an ID whose deny entry is unknown to what the
// converged cluster shows.
func (l *Ledger) ResolveDeny(id string, blocked bool, seq int) {
	kind := OpLift
	if blocked {
		kind = OpBlock
	}
	l.resolve(id, kind, seq)
}

func (l *Ledger) resolve(id string, kind Kind, seq int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.entries[id]; e != nil {
		e.Writes = append(e.Writes, Write{Kind: kind, Outcome: Acked, Resolved: true, Seq: seq})
	}
}

// Model returns the model of id's writes so far (ok false: none yet).
func (l *Ledger) Model(id string) (m Model, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[id]
	if e == nil {
		return Model{}, false
	}
	return e.Model(), true
}

// Entries returns a copy of every entry, by ID.
func (l *Ledger) Entries() map[string]Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]Entry, len(l.entries))
	for id, e := range l.entries {
		c := *e
		c.Writes = append([]Write(nil), e.Writes...)
		out[id] = c
	}
	return out
}

// Counts tallies the entries by the state they want.
func (l *Ledger) Counts() map[Want]int {
	n := map[Want]int{}
	for _, e := range l.Entries() {
		w, _ := e.Want()
		n[w]++
	}
	return n
}

// sortedIDs returns the keys of m in order.
func sortedIDs[V any](m map[string]V) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
