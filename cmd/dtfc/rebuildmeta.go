package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/dtfc/dtfc/blobstore"
)

// cmdRebuildMeta is dtfc rebuild-meta: new metadata for a stopped node
// from its blob files (blobstore.Rebuild), with a summary of what it did
// and what happens next.
func cmdRebuildMeta(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dtfc rebuild-meta", flag.ContinueOnError)
	fs.SetOutput(stderr)
	basedir := fs.String("basedir", "./dtfc-data", "the node's --basedir (the node must be stopped)")
	force := fs.Bool("force", false, "rebuild metadata that checks out sound too (it forgets the node's deletes and replication state)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: dtfc rebuild-meta --basedir DIR [--force]

Rebuilds a stopped node's metadata (DIR/meta.db) from its blob files, when
dtfc serve refuses to start because the metadata is missing or damaged.
Nothing is deleted: the old meta.db is kept as meta.db.damaged-<time>,
every blob file is hashed, those whose bytes match their name are recorded
as unconfirmed (in DIR/unconfirmed/) and the others moved to
DIR/quarantine/. Started again, the node asks its peers about each
unconfirmed blob (README: "When the metadata is damaged").

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q (dtfc rebuild-meta -h)", fs.Arg(0))
	}
	dir, err := filepath.Abs(*basedir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dtfc rebuild-meta: %s: hashing every blob file (keep the node stopped)\n", dir)
	log := slog.New(slog.NewTextHandler(stderr, nil))
	rep, err := blobstore.Rebuild(dir, blobstore.RebuildOptions{
		Logger: log,
		Force:  *force,
		Sniff:  sniff,
		Progress: func(r blobstore.RebuildReport) {
			fmt.Fprintf(stdout, "  ... %d files, %s verified so far (%s)\n", r.Verified+r.Quarantined, human(float64(r.VerifiedBytes)), r.Took.Round(time.Second))
		},
	})
	if errors.Is(err, blobstore.ErrMetaSound) {
		return fmt.Errorf("%w\nNothing was changed. To rebuild it anyway, add --force", err)
	}
	if err != nil {
		return err
	}
	w := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	if rep.Resumed {
		w("  resumed an interrupted rebuild")
	} else {
		w("  found:       %s", rep.Found)
	}
	if rep.MovedAside != "" {
		w("  kept aside:  %s (never deleted: remove it once nobody needs to look at it)", rep.MovedAside)
	}
	from := map[string]string{"node-id": "kept (node-id)", "meta.db": "kept (read from the old meta.db)", "new": "NEW: neither node-id nor the old meta.db had it"}[rep.NodeFrom]
	w("  node %s, identity %s", rep.Node, from)
	w("  verified:    %d files, %s: recorded as unconfirmed, in %s", rep.Verified, human(float64(rep.VerifiedBytes)), filepath.Join(dir, "unconfirmed"))
	w("  quarantined: %d files whose bytes do not hash to their name (%s), %d other files: in %s",
		rep.Quarantined, human(float64(rep.QuarantinedBytes)), rep.Foreign, filepath.Join(dir, "quarantine"))
	w("  took %s", rep.Took.Round(time.Millisecond))
	w("")
	w("Next: start the node as before, with the same --peerlist. It resolves each unconfirmed blob:")
	w("  - with peers, it asks them: a blob a peer holds goes back into blobs/ with the peer's state (no download),")
	w("    one the cluster deleted is removed, one no peer knows stays in unconfirmed/ (counted in /_status);")
	w("  - without peers (no peer list, or an empty one), it adopts every one as a new upload.")
	return nil
}

// sniff guesses a content type from a blob's first bytes; the generic
// answer is no answer.
func sniff(head []byte) string {
	ct := http.DetectContentType(head)
	if strings.HasPrefix(ct, "application/octet-stream") {
		return ""
	}
	return ct
}

// metaAdvice is what a refusal of the metadata tells the operator to do.
func metaAdvice(err error, basedir string) string {
	dir, aerr := filepath.Abs(basedir)
	if aerr != nil {
		dir = basedir
	}
	cmd := "    dtfc rebuild-meta --basedir " + dir
	var b strings.Builder
	b.WriteString("\nThe node did not start, and changed nothing: no blob file was touched.\n")
	if errors.Is(err, blobstore.ErrMetaForeign) {
		b.WriteString("If this meta.db was restored from another node by mistake, put this node's own back.\nOtherwise, with the node stopped, run:\n")
	} else {
		b.WriteString("To recover, with the node stopped, run:\n")
	}
	b.WriteString(cmd)
	b.WriteString("\nthen start the node again: it asks its peers about every blob it holds (alone, it adopts them).\nSee README, \"When the metadata is damaged\".")
	return b.String()
}
