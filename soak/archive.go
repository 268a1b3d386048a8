package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// The archive mode (Config.Archive): one versitygw server, a bucket
// under the prefix "soak" listed in every node's peer list as an archive
// peer (caches and the joined node included), every node with an
// archive_interval of ArchiveInterval, so that the relay runs all the
// time. Its faults (planArchive): the S3 server stopped for a while in
// every round (uploads and deletes are still acknowledged; they wait in
// the archive's queue, and a delete waits for the archive however long it
// is down), and in one round the bucket-only node: a separate dtfc
// process whose only peer is the bucket, listed by no node, so that
// everything it holds came through the relay. After every round, once the
// cluster converged (which includes every node's queue for the archive
// being empty, and so every operation acknowledged before the S3 server's
// last return being in the bucket: the heal starts it), invariant 7:
//
//   - the bucket's newest record of every ID (archive.NewestState) is a
//     live one for a present ID, a tombstone for one absent by an
//     acknowledged delete or block, none or a tombstone for one never
//     acknowledged, no older than the acknowledged write's state, and the
//     same (deleted, clock, node) as the replicas' when they hold a
//     record;
//   - the bucket-only node, once started, reaches (waited for, within
//     Converge) the replicas' set of IDs, and its disk passes the checks
//     of invariants 1-4 against the model: every present ID held with
//     right bytes, no absent one, no temp or stray file, its queue empty.

// ArchiveInterval is every node's --archive-interval in the archive mode.
const ArchiveInterval = 500 * time.Millisecond

// archivePrefix is the key prefix of the soak's archive in the bucket.
const archivePrefix = "soak"

// Kinds of violations of invariant 7.
const (
	VArchiveMissing  = "no record in the bucket of an acknowledged write"
	VArchiveState    = "bucket's newest record disagrees with the model"
	VArchiveDiffer   = "bucket's newest record differs from the replicas'"
	VArchiveRead     = "bucket unreadable"
	VBucketNode      = "bucket-only node differs from the cluster"
	VBucketNodeCheck = "bucket-only node's disk breaks an invariant"
)

// archiveRig is the S3 server, the bucket and the bucket-only node.
type archiveRig struct {
	s      *versitygw.Server
	a      *archive.Archive
	url    string // the archive's peer list url
	entry  string // its peer list entry
	down   bool   // the S3 server is stopped (test goroutine)
	node   *cluster.Cluster
	hashes hashCache // of the bucket-only node's files
	outage int       // S3 outages applied
	// stirred counts the times the cluster looked converged and then
	// no longer (a queue not empty, the replicas' digests changed) in
	// waitConverged, or the check found queues not empty after it: a
	// relay applied something. A node whose relay cursors start over (a
	// new node, a rebuilt meta.db) or that names again in its log the
	// records it pushes after its push cursor started over makes the
	// others apply again, from the bucket, tombstones they forgot longer
	// than the expiry ago: each goes back into their feeds and queues.
	stirred int
}

// quietFor is how long, in the archive mode, the cluster must stay
// converged with the replicas' digests unchanged before it counts as
// converged: the relays run every ArchiveInterval, and a node whose
// cursors start over (a new node, a rebuilt meta.db) applies again, from
// the writers' logs, tombstones the others have forgotten.
const quietFor = 4 * ArchiveInterval

// startArchive starts the S3 server and its bucket for the archive mode,
// or says why it cannot (versitygw is not installed: the soak runs
// without the archive, which the report lists as skipped).
func (r *Runner) startArchive() {
	t := r.t
	if _, missing := versitygw.Binary(); missing != "" {
		r.logf("archive skipped: %s", missing)
		r.report.Skipped = append(r.report.Skipped, "archive: "+missing)
		return
	}
	s := versitygw.ForTest(t)
	secret := versitygw.SecretFile(t)
	a, err := archive.New(context.Background(), archive.Config{Bucket: s.Bucket, Prefix: archivePrefix, Endpoint: s.URL, PathStyle: true,
		AccessKeyID: versitygw.AccessKey, SecretAccessKeyFile: secret})
	if err != nil {
		t.Fatalf("soak: archive: %v", err)
	}
	url := "s3://" + s.Bucket + "/" + archivePrefix
	r.arch = &archiveRig{s: s, a: a, url: url, hashes: hashCache{},
		entry: s.PeerEntry(archivePrefix, secret)}
	r.logf("archive: versitygw at %s, bucket %s in every node's peer list, archive_interval %v", s.URL, url, ArchiveInterval)
}

// applyArchive applies an archive fault; it reports false for one not
// applied.
func (r *Runner) applyArchive(ev Event, line *Line) bool {
	ar := r.arch
	if ar == nil {
		line.Result = "skipped: no archive"
		return false
	}
	switch ev.Kind {
	case FaultS3Stop:
		// Killed: a SIGTERM waits (up to 10 s) for the requests in
		// flight, which would hold up the round's schedule.
		if err := ar.s.Kill(); err != nil {
			r.t.Fatalf("soak: killing versitygw: %v", err)
		}
		ar.down = true
		ar.outage++
		line.Result = "S3 server killed"
	case FaultS3Start:
		r.startS3(line)
	case FaultBucketNode:
		r.startBucketNode(line)
	}
	return true
}

// startS3 starts the S3 server again if it is stopped.
func (r *Runner) startS3(line *Line) {
	ar := r.arch
	if ar == nil || !ar.down {
		return
	}
	if err := ar.s.Launch(); err != nil {
		r.t.Fatalf("soak: starting versitygw: %v", err)
	}
	ar.down = false
	line.Result = "S3 server started"
}

// startBucketNode starts the bucket-only node: one dtfc process whose
// peer list holds only the archive's entry, with the cluster's
// retention, expiry and max_clock_offset.
func (r *Runner) startBucketNode(line *Line) {
	ar, p, t := r.arch, r.plan, r.t
	if ar.node != nil {
		line.Result = "skipped: already started"
		return
	}
	ar.node = cluster.Start(t, cluster.Options{Nodes: 1, Direct: true,
		Args: []string{
			"--archive-interval", ArchiveInterval.String(),
			"--tombstone-retention", p.Retention.String(),
			"--tombstone-expiry", p.Expiry.String(),
			"--max-clock-offset", p.MaxClockOffset.String(),
		},
		ExtraPeers: func(int) string { return ar.entry }})
	n := ar.node.Nodes[0]
	// Registered after the node's cluster, so it runs before it stops:
	// its log is kept with the others' evidence.
	t.Cleanup(func() {
		if r.KeepDir == "" || (!r.NodeLogs && !t.Failed() && len(r.report.Violations()) == 0) {
			return
		}
		if err := os.MkdirAll(r.KeepDir, 0o755); err == nil {
			os.WriteFile(filepath.Join(r.KeepDir, "node-bucket.log"), []byte(n.Log()), 0o644)
		}
	})
	line.Result = fmt.Sprintf("bucket-only node at %s", n.URL)
}

// checkArchive checks invariant 7 after a round converged (see the top
// of this file): the bucket's newest records against the model and the
// replicas' states, and the bucket-only node, if started.
func (r *Runner) checkArchive(round int, entries map[string]Entry, states map[string][]NodeState, views []NodeView) []Violation {
	ar := r.arch
	if ar == nil {
		return nil
	}
	t0 := time.Now()
	out := r.checkBucket(entries, states)
	bucketTook := time.Since(t0)
	var waited time.Duration
	if ar.node != nil {
		t1 := time.Now()
		out = append(out, r.checkBucketNode(entries, views)...)
		waited = time.Since(t1)
	}
	r.logf("round %d: archive: %d S3 outages so far; converged then stirred again %d times; newest records of %d IDs checked in %v; bucket-only node %s; %d violations",
		round, ar.outage, ar.stirred, len(entries), bucketTook.Round(10*time.Millisecond),
		map[bool]string{true: fmt.Sprintf("converged and checked in %v", waited.Round(10*time.Millisecond)), false: "not started"}[ar.node != nil], len(out))
	for i, tier := range r.tier {
		if tier && i < len(views) {
			r.logf("round %d: tier node %d: %s evictions so far, %d files on its disk", round, i, r.metric(i, "dtfc_cache_evictions_total"), len(views[i].Files))
		}
	}
	return out
}

// metric is node i's value of an unlabelled metric, as /metrics prints
// it ("?" if it cannot be read).
func (r *Runner) metric(i int, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.c.Nodes[i].URL+"/metrics", nil)
	if err != nil {
		return "?"
	}
	res, err := r.hc.Do(req)
	if err != nil {
		return "?"
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil {
		return "?"
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			return v
		}
	}
	return "?"
}

// checkBucket compares the bucket's newest record of every ID with the
// model and with the replicas' states.
func (r *Runner) checkBucket(entries map[string]Entry, states map[string][]NodeState) []Violation {
	ids := sortedIDs(entries)
	newest := make([]*dtfc.State, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	jobs := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				id, err := dtfc.ParseID(ids[i])
				if err != nil {
					errs[i] = err
					continue
				}
				var st dtfc.State
				for try := range 3 {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					st, err = r.arch.a.NewestState(ctx, id)
					cancel()
					if err == nil || errors.Is(err, archive.ErrNotFound) || try == 2 {
						break
					}
					time.Sleep(time.Second)
				}
				switch {
				case err == nil:
					newest[i] = &st
				case !errors.Is(err, archive.ErrNotFound):
					errs[i] = err
				}
			}
		}()
	}
	for i := range ids {
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	var out []Violation
	add := func(kind, id, format string, args ...any) {
		out = append(out, Violation{Invariant: 7, Kind: kind, Node: -1, ID: id, Detail: fmt.Sprintf(format, args...)})
	}
	for i, id := range ids {
		e := entries[id]
		if errs[i] != nil {
			add(VArchiveRead, id, "%v", errs[i])
			continue
		}
		var b *Stamp
		show := "no record"
		if st := newest[i]; st != nil {
			b = &Stamp{Deleted: st.Deleted, Clock: uint64(st.Clock), Node: st.Node}
			show = r.showStamp(*b)
		}
		m := e.Model()
		d := m.Decider
		switch m.State {
		case Present:
			switch {
			case b == nil:
				add(VArchiveMissing, id, "file %d, uploaded at event %d", e.File.Index, d.Seq)
			case b.Deleted:
				add(VArchiveState, id, "file %d, uploaded at event %d: the newest record is %s", e.File.Index, d.Seq, show)
			case d.Stamp != nil && b.Less(*d.Stamp):
				add(VArchiveState, id, "file %d: the newest record %s is older than the upload's %s (event %d)", e.File.Index, show, r.showStamp(*d.Stamp), d.Seq)
			}
		case Absent:
			switch {
			case d != nil && b == nil && acknowledgedUpload(e):
				// A block of an ID no node knew leaves no tombstone;
				// one of an ID uploaded does (or the upload's record
				// would be there).
				add(VArchiveMissing, id, "file %d, %s at event %d", e.File.Index, d.Kind, d.Seq)
			case b != nil && !b.Deleted:
				add(VArchiveState, id, "file %d, absent (%s): the newest record is %s", e.File.Index, what(d), show)
			case b != nil && d != nil && d.Stamp != nil && b.Less(*d.Stamp):
				add(VArchiveState, id, "file %d: the newest record %s is older than the %s's %s (event %d)", e.File.Index, show, d.Kind, r.showStamp(*d.Stamp), d.Seq)
			}
		}
		// The replicas' record, when they all hold the same one (their
		// agreement is invariant 6's business).
		var rep *Stamp
		agree := true
		for n, s := range states[id] {
			if r.cache[n] {
				continue
			}
			if s.Code != 200 {
				agree = false
				break
			}
			if rep == nil {
				st := s.Stamp
				rep = &st
			} else if *rep != s.Stamp {
				agree = false
			}
		}
		if agree && rep != nil && (b == nil || *b != *rep) {
			add(VArchiveDiffer, id, "file %d: the bucket's newest record is %s, the replicas' %s", e.File.Index, show, r.showStamp(*rep))
		}
	}
	return out
}

// acknowledgedUpload reports whether an upload of e was acknowledged
// (or resolved present): then some node pushed a record of it.
func acknowledgedUpload(e Entry) bool {
	for _, w := range e.Writes {
		if w.Kind == OpUpload && (w.Outcome == Acked || w.Resolved) {
			return true
		}
	}
	return false
}

// what names the write deciding an absent state.
func what(d *Write) string {
	if d == nil {
		return "never acknowledged"
	}
	return fmt.Sprintf("%s at event %d", d.Kind, d.Seq)
}

// checkBucketNode waits (within Converge) until the bucket-only node's
// queue is empty and it holds the same IDs as a replica, then checks its
// disk against the model like a replica's (invariants 1-4). views are
// the cluster's, taken after it converged.
func (r *Runner) checkBucketNode(entries map[string]Entry, views []NodeView) []Violation {
	ar := r.arch
	var ref *NodeView
	for i := range views {
		if !views[i].Cache && views[i].Err == nil {
			ref = &views[i]
			break
		}
	}
	var out []Violation
	add := func(kind, id, format string, args ...any) {
		out = append(out, Violation{Invariant: 7, Kind: kind, Node: -1, ID: id, Detail: "bucket-only node: " + fmt.Sprintf(format, args...)})
	}
	if ref == nil {
		add(VBucketNode, "", "no replica readable to compare with")
		return out
	}
	deadline := time.Now().Add(r.plan.Converge)
	var why string
	for {
		why = r.bucketNodeDiff(ref)
		if why == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(pollEvery)
	}
	if why != "" {
		add(VBucketNode, "", "after %v: %s", r.plan.Converge, why)
	}
	// Its disk against the model, as a replica's: its view alone.
	n := ar.node.Nodes[0]
	v := NodeView{Index: -1, StatusBlobs: -1, Queues: map[string]int64{}}
	v.Files, v.Strays, v.Temp, _, v.Err = ScanNode(n.Basedir, ar.hashes)
	if st, err := ar.node.Status(0); err != nil {
		v.Err = errors.Join(v.Err, err)
	} else {
		v.fromStatus(st)
	}
	for _, viol := range Check([]NodeView{v}, entries) {
		viol.Kind, viol.Detail = VBucketNodeCheck+": "+viol.Kind, "bucket-only node: "+viol.Detail
		viol.Invariant = 7
		out = append(out, viol)
	}
	// And against the replica's set, ID by ID.
	for _, id := range sortedIDs(ref.Files) {
		if _, ok := v.Files[id]; !ok && v.Err == nil {
			add(VBucketNode, id, "held by the replicas, not by the bucket-only node")
		}
	}
	for _, id := range sortedIDs(v.Files) {
		if _, ok := ref.Files[id]; !ok {
			add(VBucketNode, id, "held by the bucket-only node, not by the replicas")
		}
	}
	if !n.Running() {
		add(VCrash, "", "the bucket-only node exited on its own")
	}
	return out
}

// bucketNodeDiff says how the bucket-only node differs now from the
// replica ref (its queues not empty, resyncing, IDs held by one only), or
// "".
func (r *Runner) bucketNodeDiff(ref *NodeView) string {
	c := r.arch.node
	st, err := c.Status(0)
	if err != nil {
		return err.Error()
	}
	if rs, info := resyncing(st); rs {
		return "resyncing" + info
	}
	for _, url := range sortedIDs(st.Queues) {
		if l := st.Queues[url].Length; l != 0 {
			return fmt.Sprintf("%d operations queued for %s%s", l, url, pusherNote(pusherStates(st)[url]))
		}
	}
	files, _, _, _, err := ScanNode(c.Nodes[0].Basedir, r.arch.hashes)
	if err != nil {
		return "scanning its disk: " + err.Error()
	}
	var missing, extra []string
	for id := range ref.Files {
		if _, ok := files[id]; !ok {
			missing = append(missing, short(id))
		}
	}
	for id := range files {
		if _, ok := ref.Files[id]; !ok {
			extra = append(extra, short(id))
		}
	}
	if len(missing)+len(extra) == 0 {
		return ""
	}
	slices.Sort(missing)
	slices.Sort(extra)
	return fmt.Sprintf("%d IDs of the replicas missing (%s), %d held that the replicas do not (%s)",
		len(missing), firstFew(missing), len(extra), firstFew(extra))
}

// queued reports whether a view shows a queue not empty.
func queued(views []NodeView) bool {
	for _, v := range views {
		for _, q := range v.Queues {
			if q != 0 {
				return true
			}
		}
	}
	return false
}

func firstFew(ids []string) string {
	if len(ids) > 5 {
		return strings.Join(ids[:5], ", ") + ", ..."
	}
	return strings.Join(ids, ", ")
}

// archiveHolds reports whether the bucket holds the blob of id (a tier
// counts as its holder once it evicted it), waiting through an S3
// outage of the plan (30 s at most) rather than taking it for a no.
func (r *Runner) archiveHolds(id string) bool {
	if r.arch == nil {
		return false
	}
	parsed, err := dtfc.ParseID(id)
	if err != nil {
		return false
	}
	// The S3 server may be down for one of the plan's outages (at most
	// 12 s): an error is no answer, and the question is asked again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ok, err := r.arch.a.HasBlob(ctx, parsed)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err == nil && ok
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// tierHolds counts a tier's live state as held when it evicted the
// bytes and the archive holds them (read back on demand): not a loss. A
// record neither held nor evicted stays a loss, as on any replica.
func (r *Runner) tierHolds(states map[string][]NodeState) {
	for id, ss := range states {
		for i := range ss {
			s := &ss[i]
			if i < len(r.tier) && r.tier[i] && s.Code == 200 && !s.Stamp.Deleted && !s.Held && s.Evicted {
				s.Held = r.archiveHolds(id)
			}
		}
	}
}
