package server

import (
	"encoding/hex"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dtfc/dtfc"
)

// blobHead writes the head of a 200 answer to a GET of a blob, as
// net/http writes what serveBlob sets (its fields sorted by name, then
// Content-Length and Date), without building an http.Header for every
// hit. Its template is made once from setBlobHeaders itself, so the two
// cannot drift: what varies from blob to blob (the ID, the type, the
// size, the date) is marked in the template by sentinels and put in at
// each answer. TestFastHitsAnswersAsNetHTTP compares the result with
// net/http's answer byte for byte.
type blobHead struct {
	parts []headPart
	date  atomic.Pointer[headDate]
}

// headPart is literal text, or a hole for one of the varying values.
type headPart struct {
	text string
	hole headHole
}

type headHole int

const (
	holeNone headHole = iota
	holeID            // the ID in lower-case hex
	holeType          // the Content-Type
	holeSize          // the Content-Length
	holeDate          // the Date
)

// The sentinels: values setBlobHeaders passes through as they are, and
// which no literal part of a head contains.
var (
	sentinelID   = dtfc.ID{0xd7, 0xf0, 0xc0, 0xde}
	sentinelType = "\x01type\x01"
	sentinelSize = "\x01size\x01"
	sentinelDate = "\x01date\x01"
)

func newBlobHead() *blobHead {
	h := http.Header{}
	setBlobHeaders(h, dtfc.State{ID: sentinelID, ContentType: sentinelType}, sourceLocal)
	h["Content-Length"] = []string{sentinelSize}
	h["Date"] = []string{sentinelDate}
	holes := map[string]headHole{sentinelID.String(): holeID, sentinelType: holeType, sentinelSize: holeSize, sentinelDate: holeDate}
	var text strings.Builder
	var parts []headPart
	text.WriteString("HTTP/1.1 200 OK\r\n")
	for _, k := range slices.Sorted(maps.Keys(h)) {
		for _, v := range h[k] {
			text.WriteString(k + ": ")
			for v != "" {
				// The first sentinel in v, if any.
				at, hole, n := len(v), holeNone, 0
				for s, hh := range holes {
					if i := strings.Index(v, s); i >= 0 && i < at {
						at, hole, n = i, hh, len(s)
					}
				}
				text.WriteString(v[:at])
				if hole == holeNone {
					break
				}
				parts = append(parts, headPart{text: text.String()}, headPart{hole: hole})
				text.Reset()
				v = v[at+n:]
			}
			text.WriteString("\r\n")
		}
	}
	text.WriteString("\r\n")
	return &blobHead{parts: append(parts, headPart{text: text.String()})}
}

// append appends st's head to w, or returns false if its type is one
// net/http would clean (then net/http's path answers).
func (bh *blobHead) append(w []byte, st dtfc.State, now time.Time) ([]byte, bool) {
	ct := blobContentType(st)
	if !plainValue([]byte(ct)) {
		return w, false
	}
	for _, p := range bh.parts {
		switch p.hole {
		case holeNone:
			w = append(w, p.text...)
		case holeID:
			w = hex.AppendEncode(w, st.ID[:])
		case holeType:
			w = append(w, ct...)
		case holeSize:
			w = strconv.AppendInt(w, st.Size, 10)
		case holeDate:
			w = append(w, bh.dateAt(now)...)
		}
	}
	return w, true
}

// headDate is a Date value, made once a second.
type headDate struct {
	sec  int64
	text string
}

func (bh *blobHead) dateAt(now time.Time) string {
	sec := now.Unix()
	if d := bh.date.Load(); d != nil && d.sec == sec {
		return d.text
	}
	d := &headDate{sec: sec, text: now.UTC().Format(http.TimeFormat)}
	bh.date.Store(d)
	return d.text
}
