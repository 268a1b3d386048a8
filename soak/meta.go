package soak

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/dtfc/dtfc/internal/cluster"
)

// metaDamages are the ways a stopped node's meta.db is damaged, by round.
var metaDamages = []string{cluster.MetaRemoved, cluster.MetaTruncated, cluster.MetaZeroed, cluster.MetaFlipped}

// metaDamage follows the runbook of README "When the metadata is damaged"
// on one replica, between two rounds (every fault healed, the cluster
// converged and checked): stop it, damage its meta.db, start it — which
// must be refused, exit status 1, with a message naming dtfc rebuild-meta
// and no Go trace — run dtfc rebuild-meta, start it. The round's checks
// then hold it to every invariant: no blob lost, no deleted one back.
func (r *Runner) metaDamage(round int) {
	p, c := r.plan, r.c
	rng := rand.New(rand.NewPCG(p.Seed, 3000+uint64(round)))
	i := rng.IntN(p.Replicas())
	how := metaDamages[round%len(metaDamages)]
	n := c.Nodes[i]
	line := Line{Round: round, Actor: "fault", Kind: FaultMetaDamage, Node: i, Peer: -1, File: -1,
		Detail: fmt.Sprintf("node %d stopped, meta.db %s, start refused, dtfc rebuild-meta, started", i, how)}
	begin := time.Now()
	line.T = r.log.Since(begin)
	defer func() {
		line.Dur = time.Since(begin)
		r.log.Add(line)
	}()
	// The uploads of lifted IDs (settle's last step) came after the
	// check: let them reach the other nodes first, as the premise says.
	// Seed 121 damaged the node that had just taken one, was then marked
	// expired by its peers in the next round's partitions before it could
	// ask them all, and left the upload in unconfirmed/, as README
	// ("When the metadata is damaged") says it must: nobody can tell it
	// of the deletes it missed. That is an upload lost with the
	// metadata's disk plus an expiry, not the runbook's case.
	if _, why, _ := r.waitConverged(r.plan.Converge); why != "" {
		r.logf("round %d: not converged before the meta.db damage: %s", round, why)
	}
	r.up[i].Store(false)
	if n.Running() {
		n.Stop()
	}
	n.DamageMeta(how)
	code, out := n.StartRefused(30 * time.Second)
	if code != 1 || !strings.Contains(out, "dtfc rebuild-meta --basedir "+n.Basedir) ||
		strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") || strings.Contains(out, "goroutine ") {
		r.report.Violate(Violation{Invariant: 0, Kind: VMetaRefusal, Node: i,
			Detail: fmt.Sprintf("meta.db %s: exit status %d: %s", how, code, tail(out, 600))})
	}
	rebuilt := n.RebuildMeta()
	n.Start()
	r.up[i].Store(true)
	r.report.countFault(FaultMetaDamage)
	line.Result = fmt.Sprintf("refused (exit %d); %s", code, tail(rebuilt, 300))
	r.logf("round %d: node %d's meta.db %s while stopped; the start was refused, rebuilt, started in %v",
		round, i, how, time.Since(begin).Round(time.Millisecond))
}

// tail is the end of s, at most n bytes, on one line.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return strings.Join(strings.Fields(s), " ")
}
