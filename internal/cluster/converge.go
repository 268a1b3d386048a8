package cluster

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// convergePoll is how often WaitConverged looks.
const convergePoll = 100 * time.Millisecond

// WaitConverged polls until the cluster is quiet and consistent: on every
// running node, GET /_status shows every replication queue empty, and
// every running replica's GET /_internal/digests has the same sums and
// counts (caches hold what they please and are left out of the
// comparison). Queues towards a node that is not running, or over a link
// that is cut, cannot drain and are not counted. A node that exited
// without Kill or Stop fails t at once. On timeout it fails t
// with what differs (per node: blob counts, queue lengths, the digest
// buckets that differ) and the tail of every node's log.
func (c *Cluster) WaitConverged(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, n := range c.Nodes {
			if msg := n.crashed(); msg != "" {
				t.Fatalf("cluster: WaitConverged: %s\n%s", msg, n.logTail(60))
			}
		}
		s := c.snapshot()
		if s.converged() {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			fmt.Fprintf(&b, "cluster: not converged after %v:\n%s", timeout, s.report())
			for _, n := range c.Nodes {
				b.WriteString(n.logTail(25))
			}
			t.Fatal(b.String())
		}
		time.Sleep(convergePoll)
	}
}

// snapshot is the state of every node at one poll.
type snapshot struct {
	nodes []nodeSnap
}

type nodeSnap struct {
	n        *Node
	running  bool
	err      error // reaching /_status or /_internal/digests
	blobs    int64
	bytes    int64
	stated   bool // /_status answered
	queues   []queueSnap
	digests  *Digests // replicas only
	excluded bool     // a cache: not compared
}

type queueSnap struct {
	url     string
	peer    string // "node 2" when the URL is known
	length  int64
	ignored string // why it does not count, or ""
}

// snapshot reads every running node's status and, for replicas, digests.
func (c *Cluster) snapshot() *snapshot {
	// Which node (and whether reachable) each peer URL stands for, per
	// requesting node.
	type target struct {
		idx int
		cut bool
	}
	byURL := map[string]target{}
	for _, n := range c.Nodes {
		byURL[n.URL] = target{idx: n.Index}
	}
	c.mu.Lock()
	for _, l := range c.links {
		byURL[l.url] = target{idx: l.to, cut: l.cut}
		if l.url2 != "" {
			byURL[l.url2] = target{idx: l.to, cut: l.cut}
		}
	}
	c.mu.Unlock()

	s := &snapshot{}
	for _, n := range c.Nodes {
		ns := nodeSnap{n: n, running: n.Running(), excluded: n.Role == RoleCache}
		if !ns.running {
			s.nodes = append(s.nodes, ns)
			continue
		}
		st, err := c.Status(n.Index)
		if err != nil {
			ns.err = err
			s.nodes = append(s.nodes, ns)
			continue
		}
		ns.blobs, ns.bytes, ns.stated = st.Blobs, st.Bytes, true
		for url, v := range st.Queues {
			q := queueSnap{url: url, length: v.Length}
			if tg, ok := byURL[url]; ok {
				q.peer = fmt.Sprintf("node %d", tg.idx)
				switch {
				case !c.Nodes[tg.idx].Running():
					q.ignored = "peer down"
				case tg.cut:
					q.ignored = "link cut"
				}
			}
			ns.queues = append(ns.queues, q)
		}
		sort.Slice(ns.queues, func(i, j int) bool { return ns.queues[i].url < ns.queues[j].url })
		if !ns.excluded {
			ns.digests, ns.err = c.Digests(n.Index)
		}
		s.nodes = append(s.nodes, ns)
	}
	return s
}

// reference is the first running replica's digests, what the others are
// compared with.
func (s *snapshot) reference() *nodeSnap {
	for i := range s.nodes {
		if ns := &s.nodes[i]; ns.running && !ns.excluded && ns.digests != nil {
			return ns
		}
	}
	return nil
}

func (s *snapshot) converged() bool {
	ref := s.reference()
	for _, ns := range s.nodes {
		if !ns.running {
			continue
		}
		if ns.err != nil {
			return false
		}
		for _, q := range ns.queues {
			if q.ignored == "" && q.length != 0 {
				return false
			}
		}
		if !ns.excluded && (ns.digests.Sums != ref.digests.Sums || !slices.Equal(ns.digests.Counts, ref.digests.Counts)) {
			return false
		}
	}
	return true
}

// report describes every node and how it differs from the reference.
func (s *snapshot) report() string {
	ref := s.reference()
	var b strings.Builder
	for _, ns := range s.nodes {
		n := ns.n
		fmt.Fprintf(&b, "  node %d (%s, %s): ", n.Index, n.Role, n.URL)
		switch {
		case !ns.running:
			b.WriteString("not running\n")
			continue
		case !ns.stated:
			fmt.Fprintf(&b, "error: %v\n", ns.err)
			continue
		}
		fmt.Fprintf(&b, "blobs=%v bytes=%v", ns.blobs, ns.bytes)
		if ns.digests != nil {
			fmt.Fprintf(&b, " digest-entries=%d synced=%v", ns.digests.Total(), ns.digests.Synced)
		}
		b.WriteString("\n    queues:")
		if len(ns.queues) == 0 {
			b.WriteString(" none")
		}
		for _, q := range ns.queues {
			fmt.Fprintf(&b, " %s", q.url)
			if q.peer != "" {
				fmt.Fprintf(&b, " (%s)", q.peer)
			}
			fmt.Fprintf(&b, "=%d", q.length)
			if q.ignored != "" {
				fmt.Fprintf(&b, " [not counted: %s]", q.ignored)
			}
			b.WriteString(";")
		}
		b.WriteString("\n")
		switch {
		case ns.err != nil:
			fmt.Fprintf(&b, "    digests: error: %v\n", ns.err)
		case ns.excluded:
			b.WriteString("    digests: not compared (cache)\n")
		case ref == nil:
		case ref.n == n:
			b.WriteString("    digests: the reference\n")
		default:
			diff := diffBuckets(ref.digests, ns.digests)
			if len(diff) == 0 {
				fmt.Fprintf(&b, "    digests: same as node %d\n", ref.n.Index)
				continue
			}
			fmt.Fprintf(&b, "    digests: %d buckets differ from node %d's (bucket: entries there/here):", len(diff), ref.n.Index)
			for i, k := range diff {
				if i == 32 {
					fmt.Fprintf(&b, " ... %d more", len(diff)-i)
					break
				}
				fmt.Fprintf(&b, " %02x:%d/%d", k, ref.digests.Counts[k], ns.digests.Counts[k])
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// diffBuckets lists the ID ranges (first bytes) whose digests differ.
func diffBuckets(a, b *Digests) []int {
	var out []int
	for k := range 256 {
		if a.Counts[k] != b.Counts[k] || a.Sums[k*64:(k+1)*64] != b.Sums[k*64:(k+1)*64] {
			out = append(out, k)
		}
	}
	return out
}
