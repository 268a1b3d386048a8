package soak

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dtfc/dtfc"
)

// sabotage is one self-test applied behind the soak's back (Config.Sabotage).
type sabotage struct {
	kind   string
	id     string
	file   int
	node   int
	what   string
	expect []string // violation kinds, any of which on id catches it
}

// sabotage applies the configured self-tests to node 0 (a replica) once
// the first round converged, each on an ID of its own.
func (r *Runner) sabotage(round int) {
	entries := r.ledger.Entries()
	used := map[string]bool{}
	n := r.c.Nodes[0]
	pickID := func(ok func(Entry, Model) bool) (Entry, bool) {
		for _, id := range sortedIDs(entries) {
			e := entries[id]
			if !used[id] && e.Worker >= 0 && ok(e, e.Model()) {
				used[id] = true
				return e, true
			}
		}
		return Entry{}, false
	}
	present := func(e Entry, m Model) bool { return m.State == Present && m.Deny != Blocked }
	blobPath := func(id string) string { return filepath.Join(n.Basedir, "blobs", id[:2], id[2:4], id) }
	for _, kind := range r.plan.Sabotage {
		var e Entry
		var ok bool
		var what string
		var err error
		var expect []string
		switch kind {
		case "lost":
			if e, ok = pickID(present); ok {
				err = os.Remove(blobPath(e.ID))
				what, expect = "removed its blob file", []string{VLostUpload}
			}
		case "undone":
			if e, ok = pickID(func(e Entry, m Model) bool {
				return m.State == Absent && m.Deny != Blocked && m.Decider != nil && m.Decider.Kind == OpDelete
			}); ok {
				err = writeBlob(blobPath(e.ID), e.File)
				what, expect = "put the deleted file's bytes back into blobs/", []string{VUndoneDelete}
			}
		case "flip":
			if e, ok = pickID(func(e Entry, m Model) bool { return present(e, m) && e.File.Size > 0 && e.File.Size <= 4<<20 }); ok {
				err = flipByte(blobPath(e.ID), e.File.Size/2)
				what, expect = "flipped a byte of its blob file", []string{VWrongOnDisk}
			}
		case "delete":
			if e, ok = pickID(present); ok {
				what, err = r.call(http.MethodDelete, n.URL+"/"+e.ID, "", deleteTimeout)
				what, expect = "deleted it through the API, unrecorded: "+what, []string{VStateLost}
			}
		case "unblock":
			if e, ok = pickID(func(e Entry, m Model) bool { return m.Deny == Blocked }); ok {
				what, err = r.call(http.MethodDelete, n.URL+"/_deny/"+e.ID, "", deleteTimeout)
				what, expect = "lifted its block through the API, unrecorded: "+what, []string{VBlockMissing, VBlockedStatus}
			}
		case "block":
			e, ok = pickID(func(e Entry, m Model) bool { return m.Deny == Lifted })
			if !ok {
				e, ok = pickID(present)
			}
			if ok {
				what, err = r.call(http.MethodPut, n.URL+"/_deny/"+e.ID, fmt.Sprintf(`{"status": %d}`, BlockStatus), deleteTimeout)
				what, expect = "blocked it through the API, unrecorded: "+what, []string{VLiftedBack, VBlockUnknown}
			}
		case "archive":
			if r.arch == nil {
				r.logf("sabotage archive (self-test): no archive (run with --archive); skipped")
				r.report.addSabotage("archive: skipped, no archive")
				continue
			}
			if e, ok = pickID(present); ok {
				var id dtfc.ID
				if id, err = dtfc.ParseID(e.ID); err == nil {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					err = r.arch.a.PutState(ctx, dtfc.State{ID: id, Deleted: true, Clock: dtfc.TimestampAt(time.Now()), Node: "5ab07a9e"})
					cancel()
				}
				what, expect = "wrote into the bucket a tombstone record newer than its upload, named in no log", []string{VArchiveState}
			}
		default:
			r.t.Errorf("soak: sabotage %q: unknown (want one of %s)", kind, strings.Join(SabotageKinds, ", "))
			continue
		}
		if !ok {
			r.logf("sabotage %s (self-test): no ID to sabotage in round %d; skipped", kind, round)
			r.report.addSabotage(fmt.Sprintf("%s: skipped, no ID to sabotage", kind))
			continue
		}
		if err != nil {
			what += fmt.Sprintf(" (error: %v)", err)
		}
		r.log.Add(Line{T: r.log.Since(time.Now()), Round: round, Actor: "check", Kind: "sabotage", Node: 0, Peer: -1,
			File: e.File.Index, ID: e.ID, Size: e.File.Size, Detail: kind, Result: what})
		r.logf("sabotage %s (self-test): file %d (%s) on node 0: %s", kind, e.File.Index, short(e.ID), what)
		r.sabotaged = append(r.sabotaged, sabotage{kind: kind, id: e.ID, file: e.File.Index, node: 0, what: what, expect: expect})
	}
}

// call sends a request the ledger does not know of (a sabotage, a change
// of membership) with a time limit, and returns its answer's status; any
// other answer than 200 is an error naming the status and the body.
func (r *Runner) call(method, url, body string, limit time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	res, err := r.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s %s: %s %s", method, url, res.Status, strings.TrimSpace(string(b)))
	}
	return res.Status, nil
}

// writeBlob writes c's bytes at path, as a blob file (what a resurrected
// delete looks like to nginx).
func writeBlob(path string, c Content) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, c.Reader()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// verifySabotage reports, for each self-test applied, the violation that
// caught it, and fails the test for one that none caught.
func (r *Runner) verifySabotage(vs []Violation) {
	for _, s := range r.sabotaged {
		i := slices.IndexFunc(vs, func(v Violation) bool { return v.ID == s.id && slices.Contains(s.expect, v.Kind) })
		if i < 0 {
			r.t.Errorf("soak: sabotage %s (self-test) of file %d (%s) NOT caught: no violation %q on it", s.kind, s.file, short(s.id), s.expect)
			r.report.addSabotage(fmt.Sprintf("%s of file %d: NOT caught", s.kind, s.file))
			continue
		}
		r.logf("sabotage %s (self-test) of file %d caught: %v", s.kind, s.file, vs[i])
		r.report.addSabotage(fmt.Sprintf("%s of file %d: caught as %q", s.kind, s.file, vs[i].Kind))
	}
}
