package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/listflag"
)

const couchUsage = `Usage:
  dtfc couchdb migrate --couch URL --db NAME [--server URL]... [flags]
      move every attachment of the database to dtfc, recording
      doc.dtfc[name] = {"sha512", "content_type", "length"}; resumable
  dtfc couchdb follow --couch URL --db NAME [--server URL]... [flags]
      the same, continuously, following the change feed (until SIGTERM)
  dtfc couchdb orphans --couch URL --db NAME [--db NAME]... --server URL
          [--token TOKEN] [--older-than DURATION [--purge]]
      list the blobs a replica holds (GET /_blobs) that no document of
      the databases references, in any readable revision; with
      --older-than, only those uploaded longer ago; with --purge, delete
      them throughout the cluster (a report unless --purge is given)

Run "dtfc couchdb SUBCOMMAND -h" for the flags.
`

const orphansHelp = `
Orphans lists the node's blobs first, then reads the references of every
document (winning and conflicting revisions), then, with --purge, reads
each orphan's entry again just before deleting it: a blob uploaded again
meanwhile is young and kept. A blob uploaded less than --older-than ago
is never an orphan, so an application that uploads a blob and then writes
its reference within that time is safe. Age is measured against the
earlier of this machine's clock and the node's.

Name a replica: it holds the whole collection; a cache lists only what it
holds. Deletes go through that node and reach every node. The IDs go to
stdout (one a line: deleted, or would be), the summary to stderr; the
exit status is 1 if a delete failed.

  dtfc couchdb orphans --couch $C --db photos --server $S --older-than 24h          # report
  dtfc couchdb orphans --couch $C --db photos --server $S --older-than 24h --purge  # delete

--blobs DIR (a replica's basedir, read from its disk) is the older way to
list; it has no upload times, so it only reports.
`

func cmdCouchDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, couchUsage)
		return usagef("no sub-command given")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "migrate", "follow", "orphans":
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, couchUsage)
		return flag.ErrHelp
	default:
		fmt.Fprint(stderr, couchUsage)
		return usagef("unknown sub-command %q", sub)
	}
	a, err := parseCouchArgs(sub, args, stderr)
	if err != nil {
		return err
	}
	cc, err := couchdb.New(a.couch, couchdb.ClientOptions{})
	if err != nil {
		return err
	}
	defer cc.CloseIdleConnections()
	if sub == "orphans" {
		return couchOrphans(ctx, cc, a, stdout, stderr)
	}
	if len(a.dbs) > 1 {
		return fmt.Errorf("%s takes one --db (run one per database)", sub)
	}
	if a.batch <= 0 || a.conc <= 0 {
		return errors.New("--batch and --concurrency must be positive")
	}
	return couchMigrate(ctx, a, cc.DB(a.dbs[0]), stdout, stderr)
}

// couchArgs are the flags of a couchdb sub-command; those the sub-command
// does not take stay zero.
type couchArgs struct {
	sub       string
	fs        *flag.FlagSet
	mk        func() (*client.Client, error) // the dtfc client, from the shared flags
	couch     string
	dbs       []string
	remove    bool
	replicas  int
	dry       bool
	batch     int
	conc      int
	heartbeat time.Duration
	verbose   bool
	blobs     string
	purge     bool
	olderThan time.Duration
}

// parseCouchArgs parses the flags of the sub-command sub, and checks the
// ones every sub-command needs. Help and flag errors go to stderr.
func parseCouchArgs(sub string, args []string, stderr io.Writer) (*couchArgs, error) {
	a := &couchArgs{sub: sub}
	a.fs, a.mk = clientFlags("couchdb " + sub)
	fs := a.fs
	fs.SetOutput(stderr)
	fs.StringVar(&a.couch, "couch", os.Getenv("DTFC_COUCHDB"), "CouchDB URL; may carry user:password@ (default $DTFC_COUCHDB)")
	if sub == "orphans" {
		fs.Var(&listflag.List{Into: &a.dbs}, "db", "database whose documents count as references; repeat for several")
		fs.DurationVar(&a.olderThan, "older-than", 0, "grace period: only blobs uploaded longer ago are orphans (at least 1m; required with --purge)")
		fs.BoolVar(&a.purge, "purge", false, "delete the orphans throughout the cluster (DELETE through --server, write token); without it, only report")
		fs.StringVar(&a.blobs, "blobs", "", "instead of --server: a replica's basedir (or its blobs/ directory), read from disk; report only")
		fs.Usage = func() {
			fmt.Fprintf(fs.Output(), "Usage of dtfc couchdb orphans:\n")
			fs.PrintDefaults()
			fmt.Fprint(fs.Output(), orphansHelp)
		}
	} else {
		fs.Var(&listflag.List{Into: &a.dbs}, "db", "database to migrate")
		fs.BoolVar(&a.remove, "remove-attachments", false, "drop each attachment from its document once it is in dtfc (same update)")
		fs.IntVar(&a.replicas, "replicas", 0, "wait until this many replicas hold each file before recording it (?replicas=N); with --remove-attachments, an attachment leaves CouchDB only then")
		fs.BoolVar(&a.dry, "dry-run", false, "report what would be done; write nothing")
		fs.IntVar(&a.batch, "batch", 100, "changes per page of the feed; the checkpoint moves as pages complete")
		fs.IntVar(&a.conc, "concurrency", 4, "documents migrated at once")
		fs.BoolVar(&a.verbose, "v", false, "log every document updated")
		if sub == "follow" {
			fs.DurationVar(&a.heartbeat, "heartbeat", 10*time.Second, "change feed heartbeat; a connection silent for three is re-opened")
		}
	}
	pos, err := interleaved(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, usagef("unexpected argument %q", pos[0])
	}
	if a.couch == "" {
		return nil, usagef("--couch URL is required")
	}
	if len(a.dbs) == 0 {
		return nil, usagef("--db NAME is required")
	}
	return a, nil
}

// couchMigrate runs migrate or follow on db, then prints what it did.
func couchMigrate(ctx context.Context, a *couchArgs, db *couchdb.DB, stdout, stderr io.Writer) error {
	opts, err := a.migrateOptions(stdout, stderr)
	if err != nil {
		return err
	}
	info, err := db.Info(ctx)
	if err != nil {
		return err
	}
	var mp *migrationProgress
	if a.sub == "migrate" {
		if pb := newProgress(stderr, a.dbs[0], info.DocCount); pb != nil {
			mp = &migrationProgress{progress: pb}
			opts.Progress = mp.update
		}
	}
	m, err := couchdb.NewMigrator(db, opts)
	if err != nil {
		return err
	}
	start := time.Now()
	var stats couchdb.Stats
	if a.sub == "follow" {
		stats, err = m.Follow(ctx)
	} else {
		stats, err = m.Run(ctx)
	}
	if mp != nil {
		mp.done()
	}
	printSummary(stdout, a.dbs[0], stats, time.Since(start), a.dry)
	if err != nil && ctx.Err() != nil {
		return errors.New("interrupted; the same command resumes from the checkpoint")
	}
	if err != nil {
		return err
	}
	if stats.Failures > 0 {
		return fmt.Errorf("%d attachments or documents could not be migrated (listed above); they stay in CouchDB", stats.Failures)
	}
	return nil
}

// migrateOptions returns the migrator's options, with the dtfc client.
func (a *couchArgs) migrateOptions(stdout, stderr io.Writer) (couchdb.Options, error) {
	dc, err := a.mk()
	if err != nil {
		return couchdb.Options{}, err
	}
	// The servers, as mk settled them (defaults included), name the
	// checkpoint: another cluster starts from the beginning.
	servers := strings.Split(a.fs.Lookup("server").Value.String(), ",")
	slices.Sort(servers)
	level := slog.LevelWarn
	if a.verbose || a.sub == "follow" {
		level = slog.LevelInfo
	}
	opts := couchdb.Options{
		Store:             dc,
		RemoveAttachments: a.remove,
		Replicas:          a.replicas,
		DryRun:            a.dry,
		Batch:             a.batch,
		Concurrency:       a.conc,
		Target:            strings.Join(servers, ","),
		Heartbeat:         a.heartbeat,
		Logger:            slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	}
	if a.dry {
		opts.Report = func(e couchdb.Event) {
			if e.Action == "would move" {
				fmt.Fprintf(stdout, "would move %s/%s (%d bytes)\n", e.DocID, e.Attachment, e.Length)
			}
		}
	}
	return opts, nil
}

// migrationProgress draws the progress of a migration on a terminal: the
// bar counts documents against the database's document count (the feed
// also brings back the documents the migration updated, so it may reach
// the end before the run does).
type migrationProgress struct {
	*progress
	stats couchdb.Stats
}

func (mp *migrationProgress) update(s couchdb.Stats) {
	mp.stats = s
	if time.Since(mp.last) > 100*time.Millisecond {
		mp.last = time.Now()
		mp.show()
	}
}

func (mp *migrationProgress) show() {
	s := mp.stats
	frac := 0.0
	if mp.total > 0 {
		frac = min(float64(s.Documents)/float64(mp.total), 1)
	}
	bar := strings.Repeat("#", int(frac*20)) + strings.Repeat(".", 20-int(frac*20))
	rate := float64(s.Bytes) / max(time.Since(mp.start).Seconds(), 1e-3)
	failed := ""
	if s.Failures > 0 {
		failed = fmt.Sprintf(" %d failed", s.Failures)
	}
	fmt.Fprintf(mp.w, "\r%-16.16s [%s] %d/%d docs %d files %s %s/s%s ",
		mp.name, bar, s.Documents, mp.total, s.Attachments, human(float64(s.Bytes)), human(rate), failed)
}

func (mp *migrationProgress) done() {
	mp.show()
	fmt.Fprintln(mp.w)
}

// printSummary prints what a migration did.
func printSummary(w io.Writer, db string, s couchdb.Stats, took time.Duration, dry bool) {
	would := ""
	if dry {
		would = "would be "
	}
	secs := max(took.Seconds(), 1e-3)
	fmt.Fprintf(w, "database %s: %d documents examined, %d %supdated", db, s.Documents, s.Updated, would)
	if s.Design > 0 {
		fmt.Fprintf(w, ", %d design documents left alone", s.Design)
	}
	fmt.Fprintf(w, "\nattachments: %d %smoved to dtfc (%s), %d skipped (already in dtfc)\n",
		s.Attachments, would, human(float64(s.Bytes)), s.Skipped)
	fmt.Fprintf(w, "uploads: %d, conflicts retried: %d\n", s.Uploads, s.Conflicts)
	fmt.Fprintf(w, "failed: %d\n", s.Failures)
	for _, f := range s.Failed {
		if f.Attachment != "" {
			fmt.Fprintf(w, "  %s: attachment %q: %s\n", f.DocID, f.Attachment, f.Reason)
		} else {
			fmt.Fprintf(w, "  %s: %s\n", f.DocID, f.Reason)
		}
	}
	if n := s.Failures - int64(len(s.Failed)); n > 0 {
		fmt.Fprintf(w, "  (and %d more)\n", n)
	}
	fmt.Fprintf(w, "time: %s (%.1f documents/s, %s/s)\n",
		took.Round(time.Millisecond), float64(s.Documents)/secs, human(float64(s.Bytes)/secs))
}

// couchOrphans reports (and with --purge deletes) the blobs that no
// document of the databases references: listed by the --server node
// (GET /_blobs), or, with --blobs, read from a replica's disk.
func couchOrphans(ctx context.Context, cc *couchdb.Client, a *couchArgs, stdout, stderr io.Writer) error {
	olderThanSet := false
	a.fs.Visit(func(f *flag.Flag) { olderThanSet = olderThanSet || f.Name == "older-than" })
	switch {
	case a.blobs != "" && (a.purge || olderThanSet):
		return errors.New("--purge and --older-than need the blob list of --server (GET /_blobs): --blobs has no upload times")
	case a.purge && !olderThanSet:
		return fmt.Errorf("--purge needs --older-than DURATION (at least %s): blobs uploaded more recently may be about to be referenced", couchdb.MinOlderThan)
	case olderThanSet && a.olderThan < couchdb.MinOlderThan:
		return fmt.Errorf("--older-than %s: must be at least %s; a blob uploaded more recently may be about to be referenced", a.olderThan, couchdb.MinOlderThan)
	}
	handles := make([]*couchdb.DB, len(a.dbs))
	for i, name := range a.dbs {
		handles[i] = cc.DB(name)
	}
	if a.blobs != "" {
		return orphansOnDisk(ctx, handles, a.dbs, a.blobs, stdout, stderr)
	}
	dc, err := a.mk()
	if err != nil {
		return err
	}
	if st, err := dc.Status(ctx); err == nil && st.Role == dtfc.RoleCache {
		fmt.Fprintf(stderr, "warning: %s is a cache: it lists only the blobs it holds; name a replica to find every orphan\n", st.Node)
	}
	stats, err := couchdb.Collect(ctx, couchdb.CollectOptions{
		Blobs:     dc,
		DBs:       handles,
		OlderThan: a.olderThan,
		Purge:     a.purge,
		Report: func(o couchdb.Orphan) {
			switch o.Action {
			case "would delete", "deleted":
				fmt.Fprintln(stdout, o.ID)
			case "failed":
				fmt.Fprintf(stderr, "failed to delete %s: %v\n", o.ID, o.Err)
			case "kept":
				fmt.Fprintf(stderr, "kept %s: uploaded again at %s\n", o.ID, o.Uploaded.UTC().Format(time.RFC3339))
			}
		},
	})
	if err != nil {
		return orphansError(err)
	}
	printOrphans(stderr, a, stats)
	if stats.Failed > 0 {
		return fmt.Errorf("%d orphans could not be deleted (listed above); run again to retry", stats.Failed)
	}
	return nil
}

// orphansError says what to do about a node's refusal.
func orphansError(err error) error {
	var ce *client.Error
	if !errors.As(err, &ce) {
		return err
	}
	switch ce.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w\nthe node needs a token: its write token (a read token lists where only read_token is set): --token TOKEN or $DTFC_TOKEN", err)
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		if strings.Contains(ce.URL, "/_blobs") {
			return fmt.Errorf("%w\nthis node cannot list its blobs (GET /_blobs came with a later dtfc): upgrade it, or use --blobs DIR on a replica (report only)", err)
		}
	}
	return err
}

// printOrphans prints the summary of a collection.
func printOrphans(w io.Writer, a *couchArgs, s couchdb.CollectStats) {
	fmt.Fprintf(w, "listed: %d blobs (%s)\n", s.Listed, human(float64(s.ListedBytes)))
	fmt.Fprintf(w, "documents: %d read in %s\n", s.Documents, strings.Join(a.dbs, ", "))
	fmt.Fprintf(w, "referenced: %d\n", s.Referenced)
	old := ""
	if a.olderThan > 0 {
		fmt.Fprintf(w, "young: %d (unreferenced, uploaded less than %s ago)\n", s.Young, a.olderThan)
		old = fmt.Sprintf(", uploaded more than %s ago", a.olderThan)
	}
	fmt.Fprintf(w, "orphans: %d (%s)%s\n", s.Orphans, human(float64(s.OrphanBytes)), old)
	if !a.purge {
		fmt.Fprintf(w, "deleted: none (a report; --purge deletes)\n")
		return
	}
	fmt.Fprintf(w, "deleted: %d (%s)\n", s.Deleted, human(float64(s.DeletedBytes)))
	fmt.Fprintf(w, "failed: %d\n", s.Failed)
	if s.Kept > 0 || s.Gone > 0 {
		fmt.Fprintf(w, "left: %d uploaded again since the listing, %d deleted meanwhile by others\n", s.Kept, s.Gone)
	}
}

// orphansOnDisk lists the blobs of a replica's store that no document of
// dbs references, from its blob directory (the documented on-disk layout,
// blobs/ab/cd/<id>). It has no upload times: a report only.
func orphansOnDisk(ctx context.Context, handles []*couchdb.DB, dbs []string, dir string, stdout, stderr io.Writer) error {
	held, err := listBlobs(dir)
	if err != nil {
		return err
	}
	ids := make([]dtfc.ID, 0, len(held))
	for id := range held {
		ids = append(ids, id)
	}
	orphans, err := couchdb.Orphans(ctx, handles, ids)
	if err != nil {
		return err
	}
	var bytes int64
	for _, id := range orphans {
		fmt.Fprintln(stdout, id)
		bytes += held[id]
	}
	fmt.Fprintf(stderr, "%d of %d blobs (%s) are referenced by no document of %s\n",
		len(orphans), len(held), human(float64(bytes)), strings.Join(dbs, ", "))
	return nil
}

// listBlobs returns the blobs under dir (a basedir, or its blobs/
// directory) with their sizes.
func listBlobs(dir string) (map[dtfc.ID]int64, error) {
	if fi, err := os.Stat(filepath.Join(dir, "blobs")); err == nil && fi.IsDir() {
		dir = filepath.Join(dir, "blobs")
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, err
	}
	held := map[dtfc.ID]int64{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		id, perr := dtfc.ParseID(d.Name())
		if perr != nil || filepath.Base(filepath.Dir(path)) != d.Name()[2:4] {
			return nil // not a blob file
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		held[id] = fi.Size()
		return nil
	})
	return held, err
}
