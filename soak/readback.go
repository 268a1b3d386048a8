package soak

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"time"
)

// readBack reads IDs through the API once converged:
//
//   - a sample of present IDs, each from a random replica, locally: the
//     right bytes (a cache is not required to hold anything);
//   - a sample of deleted IDs from every node, caches included, peers
//     allowed: 404 (invariant 2);
//   - every blocked ID (up to twice the sample) from every node: its
//     status;
//   - every blob flipped this round, from its node: the right bytes now
//     that the scrubber repaired it.
func (r *Runner) readBack(entries map[string]Entry, views []NodeView) []Violation {
	rng := rand.New(rand.NewPCG(r.plan.Seed, uint64(r.round.Load())+7))
	present, deleted, blocked := shuffledIDs(entries, rng)
	var out []Violation
	out = append(out, r.readPresent(entries, present[:min(sample, len(present))], rng)...)
	out = append(out, r.readDeleted(entries, deleted[:min(sample, len(deleted))])...)
	out = append(out, r.readBlocked(entries, blocked[:min(2*sample, len(blocked))])...)
	out = append(out, r.readFlipped(entries)...)
	return out
}

// shuffledIDs sorts the IDs into present (of 4 MiB at most), deleted and
// blocked ones, each list shuffled with rng.
func shuffledIDs(entries map[string]Entry, rng *rand.Rand) (present, deleted, blocked []string) {
	for _, id := range sortedIDs(entries) {
		e := entries[id]
		m := e.Model()
		switch {
		case m.Deny == Blocked:
			blocked = append(blocked, id)
		case m.State == Present && e.File.Size <= 4<<20:
			present = append(present, id)
		case m.State == Absent && m.Decider != nil && m.Decider.Kind == OpDelete:
			deleted = append(deleted, id)
		}
	}
	for _, s := range [][]string{present, deleted, blocked} {
		rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	}
	return present, deleted, blocked
}

// getChecked reads id from node, within checkReadTimeout (a node that
// stops answering is a finding, not a hang); a violation names the node.
func (r *Runner) getChecked(node int, id string, op Op) (class, res string, v *Violation) {
	line := Line{}
	ctx, cancel := context.WithTimeout(context.Background(), checkReadTimeout)
	defer cancel()
	class, res, v = r.read(ctx, r.c.Nodes[node].URL, id, op, &line)
	if v != nil {
		v.Node = node
		v.Detail += " (read after convergence)"
	}
	return class, res, v
}

// readPresent reads each of ids from a replica chosen with rng, locally:
// it must give the right bytes.
func (r *Runner) readPresent(entries map[string]Entry, ids []string, rng *rand.Rand) []Violation {
	var replicas []int
	for i := range r.c.Nodes {
		if !r.cache[i] {
			replicas = append(replicas, i)
		}
	}
	var out []Violation
	for _, id := range ids {
		node := replicas[rng.IntN(len(replicas))]
		// A tier holds the bytes it evicted in its archive: it may fetch.
		class, res, v := r.getChecked(node, id, Op{Kind: OpRead, File: entries[id].File, NoPeer: !r.tier[node]})
		if v != nil {
			out = append(out, *v)
		} else if class != "200 verified" {
			how := "GET ?nopeerload=1"
			if r.tier[node] {
				how = "GET of a tier"
			}
			out = append(out, Violation{Invariant: 1, Kind: VLostUpload, Node: node, ID: id, Detail: how + " after convergence: " + res})
		}
	}
	return out
}

// readDeleted reads each of ids from every node: 404 (invariant 2).
func (r *Runner) readDeleted(entries map[string]Entry, ids []string) []Violation {
	var out []Violation
	for _, id := range ids {
		e := entries[id]
		m := e.Model()
		for node := range r.c.Nodes {
			class, res, v := r.getChecked(node, id, Op{Kind: OpRead, File: e.File})
			switch {
			case v != nil:
				out = append(out, *v)
			case m.Deny == DenyUnknown && class == fmt.Sprint(BlockStatus):
				// A lift whose answer never came: blocked is as right as
				// deleted (the model resolves it from the deny lists).
			case m.Deny == Lifted && class == fmt.Sprint(BlockStatus):
				out = append(out, Violation{Invariant: 2, Kind: VLiftedBack, Node: node, ID: id,
					Detail: fmt.Sprintf("file %d, lifted at event %d, deleted at event %d: GET after convergence: %s", e.File.Index, m.DenyDecider.Seq, m.Decider.Seq, res)})
			case strings.HasPrefix(class, "200"):
				out = append(out, Violation{Invariant: 2, Kind: VDeletedServed, Node: node, ID: id,
					Detail: fmt.Sprintf("file %d, deleted at event %d: GET after convergence: %s", e.File.Index, e.Model().Decider.Seq, res)})
			case class != "404":
				out = append(out, Violation{Invariant: 2, Kind: VDeletedNot404, Node: node, ID: id,
					Detail: fmt.Sprintf("file %d, deleted at event %d: GET after convergence: %s", e.File.Index, e.Model().Decider.Seq, res)})
			}
		}
	}
	return out
}

// readBlocked reads each of ids from every node: BlockStatus.
func (r *Runner) readBlocked(entries map[string]Entry, ids []string) []Violation {
	var out []Violation
	for _, id := range ids {
		e := entries[id]
		seq := e.Model().DenyDecider.Seq
		for node := range r.c.Nodes {
			class, res, v := r.getChecked(node, id, Op{Kind: OpRead, File: e.File})
			switch {
			case v != nil:
				out = append(out, *v)
			case strings.HasPrefix(class, "200"):
				out = append(out, Violation{Invariant: 2, Kind: VBlockedServed, Node: node, ID: id,
					Detail: fmt.Sprintf("file %d, blocked at event %d: %s", e.File.Index, seq, res)})
			case class != fmt.Sprint(BlockStatus):
				out = append(out, Violation{Invariant: 2, Kind: VBlockedStatus, Node: node, ID: id,
					Detail: fmt.Sprintf("file %d, blocked (%d) at event %d: GET answered %s", e.File.Index, BlockStatus, seq, res)})
			}
		}
	}
	return out
}

// readFlipped reads every blob flipped this round from its node: the
// right bytes, now that the scrubber repaired it.
func (r *Runner) readFlipped(entries map[string]Entry) []Violation {
	var out []Violation
	r.refreshFlips() // the convergence may have ended before it looked
	flips := r.takeFlips()
	keys := make([]flipKey, 0, len(flips))
	for k := range flips {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].node < keys[j].node || keys[i].node == keys[j].node && keys[i].id < keys[j].id
	})
	for _, k := range keys {
		f := flips[k]
		e := entries[k.id]
		op := Op{Kind: OpRead, File: e.File, NoPeer: !r.cache[k.node] && !r.tier[k.node]}
		class, res, v := r.getChecked(k.node, k.id, op)
		line := Line{T: r.log.Since(time.Now()), Round: int(r.round.Load()), Actor: "check", Kind: OpRead, Node: k.node, Peer: -1,
			File: e.File.Index, ID: k.id, Size: e.File.Size, Detail: fmt.Sprintf("the blob flipped %v before, %s", time.Since(f.at).Round(100*time.Millisecond), cmp.Or(f.how, "NOT repaired")), Result: res}
		seq := r.log.Add(line)
		want, _ := e.Want()
		switch {
		case v != nil && f.repaired.IsZero():
			v.Detail += fmt.Sprintf("; the file was flipped on disk and not repaired by the check, event %d", seq)
			out = append(out, *v)
		case v != nil:
			v.Kind = VWrongAfterRepair
			v.Detail += fmt.Sprintf("; the file was flipped on disk and %s (scrub), event %d", f.how, seq)
			out = append(out, *v)
		case want == Present && !r.cache[k.node] && class != "200 verified":
			out = append(out, Violation{Invariant: 1, Kind: VLostUpload, Node: k.node, ID: k.id,
				Detail: fmt.Sprintf("file %d, flipped on disk and %s: GET ?nopeerload=1 answered %s, event %d", e.File.Index, f.how, res, seq)})
		}
	}
	return out
}

// uploadLifted uploads again every ID whose block was lifted and that is
// absent (a lifted ID is uploadable again: Consistency 8 and spec 11, a
// lift is not undone by a node that was away), through a node drawn from
// the seed. A 451 or 403 is a violation; the uploads enter the ledger
// and are checked by the next round.
func (r *Runner) uploadLifted(round int) string {
	rng := rand.New(rand.NewPCG(r.plan.Seed, 5000+uint64(round)))
	entries := r.ledger.Entries()
	n, acked := 0, 0
	for _, id := range sortedIDs(entries) {
		e := entries[id]
		m := e.Model()
		if m.Deny != Lifted || m.State != Absent {
			continue
		}
		n++
		node := rng.IntN(len(r.c.Nodes))
		url := r.c.Nodes[node].URL
		line := Line{Round: round, Actor: "check", Kind: OpReupload, Node: node, Peer: -1, File: e.File.Index, ID: id, Size: e.File.Size}
		begin := time.Now()
		line.T = r.log.Since(begin)
		ctx, cancel := context.WithTimeout(context.Background(), checkReadTimeout)
		defer cancel()
		out, res := r.upload(ctx, url, id, Op{Worker: e.Worker, Kind: OpReupload, File: e.File, Variant: PutID}, &line)
		line.Detail = "lifted at event " + fmt.Sprint(m.DenyDecider.Seq) + ", uploadable again? " + line.Detail
		w := Write{Kind: OpUpload, Outcome: out}
		if out == Acked {
			acked++
			if st, err := r.readState(ctx, node, url, id); err == nil && st.Code == http.StatusOK {
				w.Stamp = &st.Stamp
				res += " [" + r.showStamp(st.Stamp) + "]"
			}
		}
		line.Dur, line.Result = time.Since(begin), res
		w.Seq = r.log.Add(line)
		r.ledger.Record(id, e.File, e.Worker, w)
		if out == Refused && (strings.HasPrefix(res, "451") || strings.HasPrefix(res, "403")) {
			r.report.Violate(Violation{Invariant: 2, Kind: VLiftedRefused, Node: node, ID: id,
				Detail: fmt.Sprintf("file %d, lifted at event %d: upload answered %s, event %d", e.File.Index, m.DenyDecider.Seq, res, w.Seq)})
		}
	}
	return fmt.Sprintf("%d lifted IDs uploaded again (%d acknowledged)", n, acked)
}

// checkReadTimeout bounds one read of the checks: long enough for a
// 64 MiB file on a busy machine, short of hanging the soak on a node that
// stopped answering.
const checkReadTimeout = 2 * time.Minute
