package soak

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Report is the outcome of a soak: what ran, what was injected, what
// broke. Safe for concurrent use through its methods.
type Report struct {
	Seed  uint64
	Short bool
	Config
	// Wall is the whole run's time; Rounds the rounds completed.
	Wall   time.Duration
	Rounds int
	// Converge is, per round, the time from the final heal (every fault
	// removed, every node up) to a converged cluster.
	Converge []time.Duration
	// Corrupted is the number of bodies the proxies corrupted.
	Corrupted int64
	// Hashed is the bytes of blob files hashed by the checks.
	Hashed int64
	// FinalIDs counts the IDs of the last check by the state they want.
	FinalIDs map[Want]int
	// Skipped lists faults of the plan that could not run, and why.
	Skipped []string

	mu         sync.Mutex
	ops        map[string]int // "upload acked", "read 200 verified", ...
	faults     map[Kind]int
	ackedBytes int64
	violations []Violation
	seen       map[string]bool // violations reported, by key
	excused    int             // wrong reads excused (a corrupt disk before the scrub)
	states     int64           // node states compared with the model
	sabotage   []string        // what each self-test came to
}

func newReport(seed uint64, short bool, cfg Config) *Report {
	return &Report{Seed: seed, Short: short, Config: cfg, ops: map[string]int{}, faults: map[Kind]int{}, FinalIDs: map[Want]int{},
		seen: map[string]bool{}}
}

// countOp counts a client operation by kind and outcome.
func (r *Report) countOp(kind Kind, outcome string) {
	r.mu.Lock()
	r.ops[string(kind)+" "+outcome]++
	r.mu.Unlock()
}

func (r *Report) countFault(k Kind) {
	r.mu.Lock()
	r.faults[k]++
	r.mu.Unlock()
}

func (r *Report) addAcked(n int64) {
	r.mu.Lock()
	r.ackedBytes += n
	r.mu.Unlock()
}

// Violate records violations. One seen before (the same kind on the same
// node and ID, or for no ID the same detail too) is not recorded again:
// a lost upload stays lost in every later round.
func (r *Report) Violate(vs ...Violation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range vs {
		key := fmt.Sprintf("%s|%d|%s", v.Kind, v.Node, v.ID)
		if v.ID == "" {
			key += "|" + v.Detail
		}
		if r.seen[key] {
			continue
		}
		r.seen[key] = true
		r.violations = append(r.violations, v)
	}
}

func (r *Report) countExcused() {
	r.mu.Lock()
	r.excused++
	r.mu.Unlock()
}

func (r *Report) addStates(n int64) {
	r.mu.Lock()
	r.states += n
	r.mu.Unlock()
}

func (r *Report) addSabotage(s string) {
	r.mu.Lock()
	r.sabotage = append(r.sabotage, s)
	r.mu.Unlock()
}

// Violations returns every violation found so far.
func (r *Report) Violations() []Violation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.violations)
}

// count returns the number of distinct IDs (or of violations without an
// ID) of the given kinds.
func (r *Report) count(kinds ...string) int {
	seen := map[string]bool{}
	n := 0
	for _, v := range r.Violations() {
		if !slices.Contains(kinds, v.Kind) {
			continue
		}
		if v.ID == "" {
			n++
		} else if !seen[v.ID] {
			seen[v.ID] = true
			n++
		}
	}
	return n
}

// LostUploads is the number of acknowledged, not deleted uploads missing
// (or of the wrong size, or whose state is lost) on some replica.
func (r *Report) LostUploads() int { return r.count(VLostUpload, VWrongSize, VStateLost) }

// UndoneDeletes is the number of acknowledged deletes whose file or state
// came back somewhere, or that a node served.
func (r *Report) UndoneDeletes() int { return r.count(VUndoneDelete, VStateUndone, VDeletedServed) }

// WrongServed is the number of reads that completed with wrong bytes (a
// 200, or a 206), after a repair included.
func (r *Report) WrongServed() int { return r.count(VWrongServed, VWrongRange, VWrongAfterRepair) }

// rows groups the violation kinds by the row of the table that counts
// them; the first three are LostUploads, UndoneDeletes and WrongServed.
var rows = []struct {
	name  string
	kinds []string
}{
	{"acknowledged uploads lost", []string{VLostUpload, VWrongSize, VStateLost}},
	{"deletes undone (file, state or GET)", []string{VUndoneDelete, VStateUndone, VDeletedServed}},
	{"deleted IDs answering other than 404", []string{VDeletedNot404}},
	{"wrong bytes served (after a repair included)", []string{VWrongServed, VWrongRange, VWrongAfterRepair}},
	{"blob files with wrong bytes on disk", []string{VWrongOnDisk}},
	{"temp or stray files left", []string{VTemp, VStray}},
	{"queues not empty, not converged", []string{VQueue, VNotConverged}},
	{"nodes left resyncing after the heal", []string{VResyncing}},
	{"IDs differing between replicas (files, /_status)", []string{VDiffer, VStatus}},
	{"states off the model or differing (invariant 6)", []string{VStateOlder, VStateUnexplained, VStateDiffer, VStateUnreadable}},
	{"blocks not holding (stored, served, unlisted)", []string{VBlockedStored, VBlockedServed, VBlockedStatus, VBlockMissing, VDenyDiffer, VBlockUnknown}},
	{"lifted blocks back (listed, or upload refused)", []string{VLiftedBack, VLiftedRefused}},
	{"states accepted beyond max_clock_offset", []string{VClockAccepted}},
	{"?replicas=N acknowledged too early", []string{VReplicasShort}},
	{"DELETE of a known ID answered 404", []string{VDelete404}},
	{"membership records differing, or an addition undone", []string{VMembersDiffer, VMemberUndone}},
}

// Ops returns the operation counts.
func (r *Report) Ops() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int, len(r.ops))
	for k, v := range r.ops {
		m[k] = v
	}
	return m
}

// opsTotal sums the counts whose key starts with prefix.
func (r *Report) opsTotal(prefix string) int {
	n := 0
	for k, v := range r.Ops() {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
}

// countNot returns the number of violations whose kind is among kinds
// (each one, not per ID).
func (r *Report) countNot(kinds []string) int {
	n := 0
	for _, v := range r.Violations() {
		if slices.Contains(kinds, v.Kind) {
			n++
		}
	}
	return n
}

// ConvergeStats returns the median (the lower one of an even count) and
// the largest time to converge.
func (r *Report) ConvergeStats() (p50, maxd time.Duration) {
	if len(r.Converge) == 0 {
		return 0, 0
	}
	s := slices.Clone(r.Converge)
	slices.Sort(s)
	return s[(len(s)-1)/2], s[len(s)-1]
}

// Table renders the report as a Markdown table.
func (r *Report) Table() string {
	var t table
	t.WriteString("| soak | value |\n| --- | --- |\n")
	r.setupRows(&t)
	r.opRows(&t)
	r.faultRows(&t)
	r.checkRows(&t)
	return t.String()
}

// table is a Markdown table of two columns being written.
type table struct{ strings.Builder }

func (t *table) row(k string, format string, args ...any) {
	fmt.Fprintf(t, "| %s | %s |\n", k, fmt.Sprintf(format, args...))
}

// setupRows writes what the soak ran: its seed, its cluster, its time.
func (r *Report) setupRows(t *table) {
	mode := "long"
	if r.Short {
		mode = "short"
	}
	t.row("seed", "%d (%s: %d nodes, %d of them caches%s, %d workers, %v of chaos in rounds of %v)", r.Seed, mode, r.Nodes, r.Caches,
		map[bool]string{true: ", + 1 joined", false: ""}[!r.NoAddNode], r.Workers, r.Duration, r.Round)
	t.row("cluster", "tombstone retention %v, expiry %v, max clock offset %v, scrub every %v; peer lists: self listed %v, every peer twice %v",
		r.Retention, r.Expiry, r.MaxClockOffset, r.ScrubInterval, !r.NoListSelf, !r.NoListTwice)
	t.row("wall time", "%v, %d rounds completed", r.Wall.Round(time.Second), r.Rounds)
}

// opRows writes the operations run, by kind and outcome.
func (r *Report) opRows(t *table) {
	ops := r.Ops()
	total := 0
	for _, v := range ops {
		total += v
	}
	t.row("operations run", "%d", total)
	keys := make([]string, 0, len(ops))
	for k := range ops {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, kind := range []Kind{OpUpload, OpReupload, OpDelete, OpRead, OpBlock, OpLift, "probe"} {
		var parts []string
		n := 0
		for _, k := range keys {
			if rest, ok := strings.CutPrefix(k, string(kind)+" "); ok {
				parts = append(parts, fmt.Sprintf("%s %d", rest, ops[k]))
				n += ops[k]
			}
		}
		t.row("· "+string(kind), "%d (%s)", n, strings.Join(parts, ", "))
	}
}

// faultRows writes the bytes acknowledged and the faults injected.
func (r *Report) faultRows(t *table) {
	r.mu.Lock()
	acked := r.ackedBytes
	faults := make(map[Kind]int, len(r.faults))
	for k, v := range r.faults {
		faults[k] = v
	}
	r.mu.Unlock()
	t.row("bytes acknowledged (uploads)", "%.1f MiB", float64(acked)/(1<<20))
	nf := 0
	var fparts []string
	for _, k := range faultStarts {
		if faults[k] > 0 {
			fparts = append(fparts, fmt.Sprintf("%s %d", k, faults[k]))
			nf += faults[k]
		}
	}
	t.row("faults injected", "%d", nf)
	t.row("· by kind", "%s", strings.Join(fparts, ", "))
	t.row("· bodies corrupted in transit", "%d", r.Corrupted)
	for _, s := range r.Skipped {
		t.row("· skipped", "%s", s)
	}
}

// checkRows writes what the checks compared and found.
func (r *Report) checkRows(t *table) {
	r.mu.Lock()
	excused, states, sab := r.excused, r.states, slices.Clone(r.sabotage)
	r.mu.Unlock()
	t.row("· reads of a blob corrupted on its node's disk, wrong before the scrub (allowed)", "%d", excused)
	t.row("node states compared with the model", "%d", states)
	var known []string
	for _, g := range rows {
		t.row(g.name, "%d", r.count(g.kinds...))
		known = append(known, g.kinds...)
	}
	t.row("other violations", "%d", len(r.Violations())-r.countNot(known))
	for _, s := range sab {
		t.row("sabotage (self-test)", "%s", s)
	}
	p50, mx := r.ConvergeStats()
	var conv []string
	for _, d := range r.Converge {
		conv = append(conv, d.Round(100*time.Millisecond).String())
	}
	t.row("time to converge after the final heal", "p50 %v, max %v (per round: %s)", p50.Round(100*time.Millisecond), mx.Round(100*time.Millisecond), strings.Join(conv, " "))
	t.row("IDs at the last check", "%d present, %d absent, %d unknown", r.FinalIDs[Present], r.FinalIDs[Absent], r.FinalIDs[Unknown])
	t.row("blob bytes hashed by the checks", "%.1f MiB", float64(r.Hashed)/(1<<20))
}
