package soak_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/soak"
)

var (
	soakFlag = flag.Bool("soak", false, "run the chaos soak (TestSoak); with -short, the two-minute one")
	seedFlag = flag.Uint64("seed", 0, "the soak's seed (0: from the clock); the same seed and flags replay a schedule")
	duration = flag.Duration("duration", 0, "chaos time of the soak (default 70s with -short, else 30m)")
	round    = flag.Duration("round", 0, "chaos time of one round, after which the cluster is healed and checked (default 35s with -short, else 3m)")
	nodes    = flag.Int("nodes", 0, "nodes to start (default 5); one more joins during the soak")
	workers  = flag.Int("workers", 0, "concurrent clients (default 4)")
	caches   = flag.Int("caches", 0, "cache nodes among -nodes (default 1 with -short, else 2; -1: none)")
	noSelf   = flag.Bool("no-list-self", false, "do not list every node in its own peer list under a second URL")
	noTwice  = flag.Bool("no-list-twice", false, "do not list every peer twice in each peer list")
	goOn     = flag.Bool("keep-going", false, "run every round even after one found violations")
	noLeave  = flag.Bool("no-leave", false, "leave out the leave and rejoin of a member")
	archive  = flag.Bool("archive", false, "list a bucket of a versitygw S3 server as an archive peer of every node, stop the server for a while every round, and start a node whose only peer is the bucket (skipped, saying why, if versitygw is not installed)")
	nodeLogs = flag.Bool("nodelogs", false, "keep every node's log in the -keep directory also when the soak passes")
	keep     = flag.String("keep", "", "directory for the event log, plan and report, and the node logs of a failure (default: $TMPDIR/dtfc-soak-<seed>)")
	sabotage sabotageFlag
)

func init() {
	flag.Var(&sabotage, "sabotage", "self-tests applied before the first check, each of which must be reported (the soak then fails): "+
		"-sabotage for all of them, or -sabotage=KIND,... with KIND among "+strings.Join(soak.SabotageKinds, ", "))
}

// sabotageFlag is -sabotage (every self-test) or -sabotage=KIND,...
type sabotageFlag []string

func (s *sabotageFlag) String() string   { return strings.Join(*s, ",") }
func (s *sabotageFlag) IsBoolFlag() bool { return true }
func (s *sabotageFlag) Set(v string) error {
	switch v {
	case "true", "all":
		*s = slices.Clone(soak.SabotageKinds)
	case "false", "":
		*s = nil
	default:
		*s = nil
		for _, k := range strings.Split(v, ",") {
			if !slices.Contains(soak.SabotageKinds, k) {
				return fmt.Errorf("unknown sabotage %q (want %s)", k, strings.Join(soak.SabotageKinds, ", "))
			}
			*s = append(*s, k)
		}
	}
	return nil
}

func TestMain(m *testing.M) { cluster.VerifyTestMain(m) }

// TestSoak runs the chaos soak (see the package doc). It runs only with
// -soak:
//
//	go test ./soak -run TestSoak -soak -short -v              # about 2 minutes
//	go test ./soak -run TestSoak -soak -v -timeout 90m        # 30 minutes of chaos
//	go test ./soak -run TestSoak -soak -short -seed N -v      # replay a seed
//
// or scripts/soak.sh. -short is go test's own flag (testing.Short).
func TestSoak(t *testing.T) {
	if !*soakFlag {
		t.Skip("the chaos soak runs only with -soak: go test ./soak -run TestSoak -soak [-short] [-seed N] -v, or scripts/soak.sh [--short] [--seed N]")
	}
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	// The seed first: whatever happens next, the run can be replayed.
	t.Logf("soak: seed %d", seed)
	cfg := soak.Config{Seed: seed, Duration: *duration, Round: *round, Nodes: *nodes, Workers: *workers, Caches: *caches,
		NoListSelf: *noSelf, NoListTwice: *noTwice, NoLeave: *noLeave, Archive: *archive, KeepGoing: *goOn, Sabotage: sabotage}
	r := soak.NewRunner(t, cfg, testing.Short())
	p := r.Plan()
	faults := 0
	for _, evs := range p.Faults {
		faults += len(evs)
	}
	t.Logf("soak: %d nodes, %d workers, %d rounds of %v, %d fault events planned; replay: %s",
		p.Nodes, p.Workers, p.Rounds(), p.Round, faults, r.Replay())
	r.KeepDir, r.NodeLogs = *keep, *nodeLogs
	if r.KeepDir == "" {
		r.KeepDir = filepath.Join(os.TempDir(), fmt.Sprintf("dtfc-soak-%d", seed))
	}
	r.Run()
}
