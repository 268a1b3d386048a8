package server

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// The status page at GET /: the data of GET /_status as HTML that needs no
// JavaScript and no other request, and reloads itself.

//go:embed page.html
var pageHTML string

// pageRefresh is the page's reload period in seconds (<meta refresh>).
const pageRefresh = 5

// Peer states as the page shows them (and marks rows with data-state).
const (
	stateUp      = "up"
	stateDown    = "down"
	stateUnknown = "unknown" // not contacted since this node started
	stateExpired = "expired" // this node forgot deletes it never acknowledged
	stateSelf    = "self"    // the entry reaches this very node
)

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"bytes":   func(n int64) string { return humanBytes(float64(n)) },
	"ubytes":  func(n uint64) string { return humanBytes(float64(n)) },
	"pct":     func(a, b uint64) string { return fmt.Sprintf("%.0f%%", percent(a, b)) },
	"pctnum":  func(a, b uint64) string { return strconv.FormatFloat(percent(a, b), 'f', 1, 64) },
	"ago":     ago,
	"lag":     lag,
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"clock":   func(t time.Time) string { return t.Format("15:04:05 MST") },
	"plural":  plural,
}).Parse(pageHTML))

// page is what the template renders.
type page struct {
	S       Status
	Now     time.Time
	Refresh int
	Peers   []pagePeer
	// Archives are the peers that are archives (also in Peers), with
	// their bytes. Their rows carry data-entry, not data-archive:
	// html/template takes "archive" for a URL attribute and blanks an
	// s3:// URL in it.
	Archives []pagePeer
	Down     int
	Scrub    *blobstore.ScrubProgress
}

type pagePeer struct {
	peer.PeerStatus
	State string
}

func newPage(st Status, now time.Time) page {
	p := page{S: st, Now: now, Refresh: pageRefresh}
	if c := st.Cluster; c != nil {
		p.Scrub = &c.Scrub
		for _, ps := range c.Peers {
			state := stateUnknown
			switch {
			case ps.Self:
				state = stateSelf
			case ps.Expired:
				state = stateExpired
			case ps.Up:
				state = stateUp
			case ps.Contacted:
				state = stateDown
				p.Down++
			}
			p.Peers = append(p.Peers, pagePeer{PeerStatus: ps, State: state})
			if ps.Archive != nil {
				p.Archives = append(p.Archives, pagePeer{PeerStatus: ps, State: state})
			}
		}
	}
	return p
}

// index serves the status page.
func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, newPage(s.statusFor(r), time.Now())); err != nil {
		s.writeError(w, r, fmt.Errorf("rendering the status page: %w", err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// Inline CSS and nothing else: no script, no other request.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(buf.Bytes())
	}
}

// plural writes "1 peer", "2 peers".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// humanBytes writes n in binary units: "512 B", "1.5 KiB", "20 GiB".
func humanBytes(n float64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%.0f B", n)
	}
	exp := 0
	for n >= unit && exp < 6 {
		n /= unit
		exp++
	}
	f := "%.1f %ciB"
	if n >= 100 {
		f = "%.0f %ciB"
	}
	return fmt.Sprintf(f, n, "KMGTPE"[exp-1])
}

func percent(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return math.Min(100, 100*float64(a)/float64(b))
}

// ago says how long before now t was: "never" for the zero time.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return roughly(d) + " ago"
}

// lag writes a replication lag: "none" when caught up.
func lag(sec float64) string {
	if sec <= 0 {
		return "none"
	}
	return roughly(time.Duration(sec * float64(time.Second)))
}

// roughly rounds d to what a reader needs: "42s", "7m 3s", "5h 12m", "3d 4h".
func roughly(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}
