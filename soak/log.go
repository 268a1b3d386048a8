package soak

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Line is one entry of the event log: a fault applied, a client
// operation and its answer, a check.
type Line struct {
	// Seq numbers the lines in the order they were logged.
	Seq int
	// T is when it started, from the start of the soak; Dur how long it
	// took.
	T, Dur time.Duration
	Round  int
	// Actor is "fault", "check" or "worker N".
	Actor string
	Kind  Kind
	// Node is the node it went to; Peer the other end of a link (-1:
	// none).
	Node, Peer int
	// File is the file's index (-1: none), ID its ID.
	File int
	ID   string
	Size int64
	// Detail says how (the upload variant, the range, the fault's
	// parameters); Result what came of it.
	Detail, Result string
}

func (l Line) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %8.3fs r%d %-9s %-10s", l.Seq, l.T.Seconds(), l.Round, l.Actor, l.Kind)
	if l.Node >= 0 {
		fmt.Fprintf(&b, " node %d", l.Node)
	}
	if l.Peer >= 0 {
		fmt.Fprintf(&b, " peer %d", l.Peer)
	}
	if l.File >= 0 {
		fmt.Fprintf(&b, " file %d (%s, %d B)", l.File, short(l.ID), l.Size)
	}
	if l.Detail != "" {
		fmt.Fprintf(&b, " %s", l.Detail)
	}
	if l.Result != "" {
		fmt.Fprintf(&b, " -> %s", l.Result)
	}
	if l.Dur > 0 {
		fmt.Fprintf(&b, " (%v)", l.Dur.Round(time.Millisecond))
	}
	return b.String()
}

// Log is the event log of a soak; safe for concurrent use.
type Log struct {
	start time.Time
	mu    sync.Mutex
	lines []Line
}

// NewLog starts a log whose times count from start.
func NewLog(start time.Time) *Log { return &Log{start: start} }

// Since is the time from the log's start to t.
func (l *Log) Since(t time.Time) time.Duration { return t.Sub(l.start) }

// Add appends a line and returns its Seq.
func (l *Log) Add(line Line) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	line.Seq = len(l.lines) + 1
	l.lines = append(l.lines, line)
	return line.Seq
}

// Lines returns a copy of the log.
func (l *Log) Lines() []Line {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Line(nil), l.lines...)
}

// Sorted returns the log ordered by start time (lines are added when
// they end).
func (l *Log) Sorted() []Line {
	lines := l.Lines()
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].T < lines[j].T })
	return lines
}

// Relevant returns what a failure needs to be understood and replayed:
// every fault, every check line, and every operation on the given IDs,
// ordered by start time.
func (l *Log) Relevant(ids map[string]bool) []Line {
	var out []Line
	for _, line := range l.Sorted() {
		if line.Actor != "" && !strings.HasPrefix(line.Actor, "worker") || ids[line.ID] {
			out = append(out, line)
		}
	}
	return out
}

// WriteTo writes every line.
func (l *Log) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, line := range l.Sorted() {
		k, err := fmt.Fprintln(w, line)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Totals counts the lines by actor class ("fault", "worker", "probe",
// "check") and kind, leaving out faults that were skipped (their result
// says so) and the ends of episodes, which are not faults of their own.
func (l *Log) Totals() map[string]map[Kind]int {
	out := map[string]map[Kind]int{}
	for _, line := range l.Lines() {
		actor, _, _ := strings.Cut(line.Actor, " ")
		if actor == "fault" && (strings.HasPrefix(line.Result, "skipped") || !slices.Contains(faultStarts, line.Kind)) {
			continue
		}
		if out[actor] == nil {
			out[actor] = map[Kind]int{}
		}
		out[actor][line.Kind]++
	}
	return out
}

// WriteTotals writes Totals as comment lines ("# fault: kill 3, ...").
func (l *Log) WriteTotals(w io.Writer) error {
	t := l.Totals()
	for _, actor := range []string{"fault", "worker", "probe", "check"} {
		kinds := make([]string, 0, len(t[actor]))
		for k := range t[actor] {
			kinds = append(kinds, string(k))
		}
		sort.Strings(kinds)
		var parts []string
		n := 0
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %d", k, t[actor][Kind(k)]))
			n += t[actor][Kind(k)]
		}
		if _, err := fmt.Fprintf(w, "# %s: %d (%s)\n", actor, n, strings.Join(parts, ", ")); err != nil {
			return err
		}
	}
	return nil
}
