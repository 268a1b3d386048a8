// Command dtfc runs a dtfc node (dtfc serve, the default) and talks to one
// (put, get, rm, status).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/dtfc/dtfc/blobstore"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; if
// empty, the module version from the build info is used.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `dtfc: a content-addressed, replicating file store

Usage:
  dtfc [serve] [flags]           run a node (dtfc serve -h lists the flags)
  dtfc put [flags] FILE...       upload files ("-" reads stdin); prints each ID
  dtfc get [flags] ID [-o FILE]  download and verify a file (stdout by default)
  dtfc rm [flags] ID...          delete files throughout the cluster
  dtfc status [flags]            print a node's status
  dtfc leave [--url URL] [--force] [flags]
                                 remove a node (default: the --server node) from the cluster
  dtfc rebuild-meta --basedir DIR
                                 rebuild a stopped node's missing or damaged metadata
  dtfc couchdb migrate|follow|orphans [flags]
                                 move CouchDB attachments to dtfc (dtfc couchdb -h)
  dtfc version                   print the version

Client commands take --server URL (repeatable; default $DTFC_SERVER or
http://localhost:8080) and --token (default $DTFC_TOKEN).
`

// run is main without the process: testable, and every path returns an
// exit code instead of calling os.Exit.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		var c Config
		c, err = loadConfig(args)
		if err == nil {
			err = serve(ctx, c, func() (Config, error) { return loadConfig(args) }, stderr)
			var me *blobstore.MetaError
			if errors.As(err, &me) {
				err = fmt.Errorf("%w%s", err, metaAdvice(err, c.Basedir))
			}
		}
	case "put":
		err = cmdPut(ctx, args, stdin, stdout, stderr)
	case "get":
		err = cmdGet(ctx, args, stdout, stderr)
	case "rm":
		err = cmdRm(ctx, args, stdout)
	case "couchdb":
		err = cmdCouchDB(ctx, args, stdout, stderr)
	case "status":
		err = cmdStatus(ctx, args, stdout)
	case "leave":
		err = cmdLeave(ctx, args, stdout)
	case "rebuild-meta":
		err = cmdRebuildMeta(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "dtfc", versionString())
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "dtfc: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dtfc %s: %v\n", cmd, err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError is a command line that is wrong (an unknown flag, a missing
// or extra argument): exit status 2, as for an unknown command; every
// other failure is 1.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// usagef returns a usageError.
func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// usageErr marks err, a flag parse error, as a usageError (but not -h).
func usageErr(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usageError{err}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
