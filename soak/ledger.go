package soak

import (
	"sort"
	"sync"
)

// Outcome is what a client can tell of a write from its answer.
type Outcome int

const (
	// Acked: the node acknowledged it (upload 200/201, or 504 after
	// ?replicas=N, which keeps the file; delete 200).
	Acked Outcome = iota
	// Refused: it was certainly not applied (the connection was refused;
	// a 4xx answer without ?replicas; 507; a delete's 404).
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
	// delete, with nothing possibly applied after it.
	Absent Want = iota
	// Present: its last acknowledged operation is an upload, with
	// nothing possibly applied after it: on every node, bytes verified.
	Present
	// Unknown: an operation after the last acknowledged one may have
	// been applied (an upload or delete whose answer never came), so
	// either state is right, but the same on every node, and if present
	// its bytes must hash to the ID.
	Unknown
)

func (w Want) String() string {
	return [...]string{"absent", "present", "unknown"}[w]
}

// Write is one upload or delete of an ID, as the ledger keeps it.
type Write struct {
	Delete  bool
	Outcome Outcome
	// Resolved marks the ledger's own entry after a round's check: an
	// Unknown ID takes the state the converged cluster shows.
	Resolved bool
	Seq      int // the event's number in the log
}

// Entry is everything the ledger knows of one ID.
type Entry struct {
	ID     string
	File   Content
	Worker int
	Writes []Write
	// everWritten is true once an upload was sent (whatever its answer).
	everWritten bool
}

// Want is the state the entry's ID must have after convergence, and the
// write that decides it (nil if none was acknowledged).
func (e *Entry) Want() (Want, *Write) {
	want := Absent
	var last *Write
	for i := range e.Writes {
		w := &e.Writes[i]
		switch w.Outcome {
		case Acked:
			last = w
			want = Present
			if w.Delete {
				want = Absent
			}
		case Maybe:
			want = Unknown
		}
	}
	return want, last
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
	if !w.Delete {
		e.everWritten = true
	}
	e.Writes = append(e.Writes, w)
}

// Resolve fixes an Unknown ID to the state the converged cluster shows,
// so later rounds hold it to that state.
func (l *Ledger) Resolve(id string, present bool, seq int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.entries[id]; e != nil {
		e.Writes = append(e.Writes, Write{Delete: !present, Outcome: Acked, Resolved: true, Seq: seq})
	}
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
