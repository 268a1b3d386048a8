package soak

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dtfc/dtfc/api"
)

// Membership: after the heal every running node holds the same
// membership records, and no node the harness has in the cluster (never
// removed, or added again with an acknowledged PUT /_members) is marked
// removed on any of them. Before this check an acknowledged addition
// could be undone by a removal dated ahead by a skewed clock while every
// other check passed (the removed node, alone, held what it held).
const (
	VMembersDiffer = "nodes disagree on the membership records"
	VMemberUndone  = "acknowledged addition of a node undone"
)

// membersAgree is how long the check waits for the records to agree:
// a change is passed on at once, and exchanged every 10 s besides.
const membersAgree = 30 * time.Second

// membersView is one node's GET /_members, and its identity (the
// basedir's node-id file: the answer does not name the node).
type membersView struct {
	Node    string       `json:"-"`
	Members []api.Member `json:"members"`
}

// checkMembers waits up to membersAgree for the running nodes' records
// to agree and to have every node in the cluster as a member, then
// reports what still does not.
func (r *Runner) checkMembers() []Violation {
	deadline := time.Now().Add(membersAgree)
	for {
		vs := r.membersFindings()
		if len(vs) == 0 || time.Now().After(deadline) {
			return vs
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// membersFindings reads every running node's records once.
func (r *Runner) membersFindings() []Violation {
	var out []Violation
	views := map[int]membersView{}
	for i, n := range r.c.Nodes {
		if !n.Running() {
			continue
		}
		var v membersView
		if err := r.c.GetJSON(i, "/_members", &v); err != nil {
			out = append(out, Violation{Kind: VNodeUnreadable, Node: i, Detail: "GET /_members: " + err.Error()})
			continue
		}
		id, err := os.ReadFile(filepath.Join(n.Basedir, "node-id"))
		if err != nil {
			out = append(out, Violation{Kind: VNodeUnreadable, Node: i, Detail: "node-id: " + err.Error()})
			continue
		}
		v.Node = strings.TrimSpace(string(id))
		views[i] = v
	}
	idOf := map[string]int{} // node identity -> node index
	for i, v := range views {
		idOf[v.Node] = i
	}
	// The same record of each member everywhere.
	byNode := map[string]map[int]api.Member{}
	for i, v := range views {
		for _, m := range v.Members {
			if byNode[m.Node] == nil {
				byNode[m.Node] = map[int]api.Member{}
			}
			byNode[m.Node][i] = m
		}
	}
	for node, recs := range byNode {
		var seen []string
		for i, m := range recs {
			seen = append(seen, fmt.Sprintf("node %d: removed=%v clock=%d", i, m.Removed, m.Clock))
		}
		slices.Sort(seen)
		if len(recs) != len(views) || !allSame(recs) {
			out = append(out, Violation{Kind: VMembersDiffer, Node: -1, Detail: fmt.Sprintf("member %s (%d of %d running nodes hold a record): %s", node, len(recs), len(views), strings.Join(seen, "; "))})
		}
		j, ok := idOf[node]
		if !ok || r.removed[j] {
			continue
		}
		for i, m := range recs {
			if m.Removed {
				out = append(out, Violation{Kind: VMemberUndone, Node: j, Detail: fmt.Sprintf("node %d holds node %d's record as removed (clock %d), though the harness's last change of it was acknowledged as an addition (or it never left)", i, j, m.Clock)})
			}
		}
	}
	return out
}

// allSame reports whether the records agree on what decides membership.
func allSame(recs map[int]api.Member) bool {
	var first *api.Member
	for _, m := range recs {
		if first == nil {
			first = &m
			continue
		}
		if m.Clock != first.Clock || m.Removed != first.Removed {
			return false
		}
	}
	return true
}
