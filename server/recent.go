package server

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dtfc/dtfc/api"
)

// LogEntry is one warning or error the node logged, as the status page
// and GET /_status show it.
type LogEntry = api.LogEntry

// Recent keeps the last warnings and errors of the node's log in a bounded
// ring, so an operator sees what went wrong lately without reading the
// logs. Wrap the logger's handler with Handler, and give Entries to
// Config.RecentErrors. It is safe for concurrent use.
type Recent struct {
	mu    sync.Mutex
	ring  []LogEntry
	next  int  // where the next entry goes
	full  bool // the ring has wrapped
	total int64
}

// Limits of what Recent keeps: memory stays bounded whatever is logged.
const (
	// DefaultRecentSize is the ring's size when NewRecent is given 0.
	DefaultRecentSize = 50
	maxEntryMessage   = 512
	maxEntryAttrs     = 1024
)

// NewRecent returns a ring of the last n warnings and errors. If n is zero
// or negative, it keeps DefaultRecentSize.
func NewRecent(n int) *Recent {
	if n <= 0 {
		n = DefaultRecentSize
	}
	return &Recent{ring: make([]LogEntry, n)}
}

// Entries returns the entries kept, newest first.
func (r *Recent) Entries() []LogEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []LogEntry
	if r.full {
		out = append(out, r.ring[r.next:]...)
	}
	out = append(out, r.ring[:r.next]...)
	slices.Reverse(out)
	return out
}

// Total is how many warnings and errors were logged since the start,
// including those the ring no longer holds.
func (r *Recent) Total() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

func (r *Recent) add(e LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.next] = e
	r.next++
	if r.next == len(r.ring) {
		r.next, r.full = 0, true
	}
	r.total++
}

// Handler returns a handler that records every record at slog.LevelWarn
// or above in r, then passes every record next would handle to next.
func (r *Recent) Handler(next slog.Handler) slog.Handler {
	return &recentHandler{r: r, next: next}
}

// recentHandler is the slog.Handler of Recent. It keeps the attributes of
// WithAttrs already formatted, with their group prefix, because a record
// is formatted only when it is a warning or an error: rare, and never on
// the hot path.
type recentHandler struct {
	r      *Recent
	next   slog.Handler
	attrs  string // formatted attributes of WithAttrs
	prefix string // groups of WithGroup, "a.b."
}

func (h *recentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *recentHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		var b strings.Builder
		b.WriteString(h.attrs)
		rec.Attrs(func(a slog.Attr) bool {
			appendAttr(&b, h.prefix, a)
			return b.Len() < maxEntryAttrs
		})
		t := rec.Time
		if t.IsZero() {
			t = time.Now()
		}
		h.r.add(LogEntry{
			Time:    t,
			Level:   rec.Level.String(),
			Message: truncate(rec.Message, maxEntryMessage),
			Attrs:   truncate(b.String(), maxEntryAttrs),
		})
	}
	if !h.next.Enabled(ctx, rec.Level) {
		return nil
	}
	return h.next.Handle(ctx, rec)
}

func (h *recentHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range attrs {
		appendAttr(&b, h.prefix, a)
	}
	return &recentHandler{r: h.r, next: h.next.WithAttrs(attrs), attrs: truncate(b.String(), maxEntryAttrs), prefix: h.prefix}
}

func (h *recentHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &recentHandler{r: h.r, next: h.next.WithGroup(name), attrs: h.attrs, prefix: h.prefix + name + "."}
}

// appendAttr writes a as " key=value" (groups flattened to "g.key").
func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			appendAttr(b, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	b.WriteString(prefix)
	b.WriteString(a.Key)
	b.WriteByte('=')
	s := v.String()
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		b.WriteString(strconv.Quote(s))
	} else {
		b.WriteString(s)
	}
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
