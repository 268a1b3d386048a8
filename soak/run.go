package soak

import (
	"cmp"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/diskspace"
)

// Timeouts of the client operations and of the end of a round.
const (
	uploadTimeout = 120 * time.Second
	deleteTimeout = 30 * time.Second
	readTimeout   = 60 * time.Second
	// grace is how long a round's operations in flight may take to
	// finish once the round is over; then they are cancelled (and their
	// writes count as Maybe).
	grace = 20 * time.Second
	// pollEvery is how often convergence is polled.
	pollEvery = 250 * time.Millisecond
	// sample bounds the IDs read back through the API after each round,
	// per kind.
	sample = 40
)

// Runner runs one soak. Its harness calls happen on the goroutine of Run
// (the test's); the workers only send HTTP requests.
type Runner struct {
	t      testing.TB
	plan   *Plan
	short  bool
	c      *cluster.Cluster
	ids    *IDs
	ledger *Ledger
	log    *Log
	report *Report
	hc     *http.Client
	start  time.Time

	mu   sync.RWMutex
	urls []string      // by node index
	up   []atomic.Bool // by node index: the workers' view
	// noWrites are the nodes the workers send no writes to: leaving
	// (as an operator stops sending a node traffic before it leaves, so
	// that its queues can drain) or removed.
	noWrites []atomic.Bool
	round    atomic.Int64

	// KeepDir, if set, receives the event log, plan and report, and on a
	// failure (or with NodeLogs) every node's log (see Keep).
	KeepDir  string
	NodeLogs bool

	streams  []*Stream
	cuts     map[[2]int]int   // refcount of cuts per directed link
	corrupt  map[[2]int]int   // refcount of corruption per link
	episodes map[int][][2]int // the links a cut episode cut
	removed  map[int]bool     // nodes removed from the cluster (FaultLeave), not yet added again
	fullDisk error            // why the full disk cannot run, or nil
	hashes   []hashCache      // by node index

	// cache marks the caches, by node index (fixed from the start).
	cache []bool
	// tier marks the tiers (Config.Tier), by node index.
	tier []bool
	// basedirs are the nodes' basedirs by index, guarded by mu (the
	// workers look at disks for ?replicas=N).
	basedirs []string
	// window is the clock-skew window in force, if any (see skew.go).
	window atomic.Pointer[skewWindow]
	// skewed are the nodes whose clock is off now (test goroutine).
	skewed map[int]time.Duration
	// probes counts the probe files made (test goroutine and the one
	// probe goroutine of a skew).
	probes atomic.Int64
	// bg tracks the probes' goroutines of a round.
	bg sync.WaitGroup
	// names maps node identities (X-Dtfc-Node) to "node i".
	names sync.Map
	// flips are the bit flips not yet checked after a repair.
	flipsMu sync.Mutex
	flips   map[flipKey]*flip
	// sabotaged are the self-tests applied, checked after the first
	// round's checks.
	sabotaged []sabotage
	// arch is the archive mode's S3 server, bucket and bucket-only
	// node (archive.go), or nil.
	arch *archiveRig
}

// NewRunner prepares a soak of cfg (zero fields: Defaults(short)) on t.
// It starts nothing.
func NewRunner(t testing.TB, cfg Config, short bool) *Runner {
	plan := NewPlan(cfg, short)
	r := &Runner{
		t:        t,
		plan:     plan,
		short:    short,
		ids:      NewIDs(plan.Seed),
		ledger:   NewLedger(),
		report:   newReport(plan.Seed, short, plan.Config),
		cuts:     map[[2]int]int{},
		corrupt:  map[[2]int]int{},
		episodes: map[int][][2]int{},
		removed:  map[int]bool{},
		up:       make([]atomic.Bool, plan.MaxNodes()),
		noWrites: make([]atomic.Bool, plan.MaxNodes()),
		hashes:   make([]hashCache, plan.MaxNodes()),
		cache:    make([]bool, plan.MaxNodes()),
		tier:     make([]bool, plan.MaxNodes()),
		skewed:   map[int]time.Duration{},
		flips:    map[flipKey]*flip{},
	}
	for i := range r.cache {
		r.cache[i] = plan.Cache(i)
		r.tier[i] = plan.Tier(i)
	}
	for i := range r.hashes {
		r.hashes[i] = hashCache{}
	}
	for w := range plan.Workers {
		r.streams = append(r.streams, plan.Stream(w))
	}
	return r
}

// Plan returns the schedule.
func (r *Runner) Plan() *Plan { return r.plan }

// Report returns the report, complete once Run returned.
func (r *Runner) Report() *Report { return r.report }

// Log returns the event log.
func (r *Runner) Log() *Log { return r.log }

// Replay is the command line that runs the same schedule again.
func (r *Runner) Replay() string {
	p := r.plan
	s := fmt.Sprintf("scripts/soak.sh --seed %d --duration %v --round %v --nodes %d", p.Seed, p.Duration, p.Round, p.Nodes)
	if r.short {
		s = fmt.Sprintf("scripts/soak.sh --short --seed %d", p.Seed)
		d := Defaults(true)
		if p.Duration != d.Duration || p.Round != d.Round || p.Nodes != d.Nodes {
			s += fmt.Sprintf(" --duration %v --round %v --nodes %d", p.Duration, p.Round, p.Nodes)
		}
	}
	if p.Workers != Defaults(r.short).Workers {
		s += fmt.Sprintf(" --workers %d", p.Workers)
	}
	if d := Defaults(r.short).withDefaults(Defaults(r.short)); p.Caches != d.Caches {
		s += fmt.Sprintf(" --caches %d", cmp.Or(p.Caches, -1))
	}
	if p.NoListSelf {
		s += " --no-list-self"
	}
	if p.NoListTwice {
		s += " --no-list-twice"
	}
	if p.KeepGoing {
		s += " --keep-going"
	}
	if p.NoLeave {
		s += " --no-leave"
	}
	if p.Archive {
		s += " --archive"
	}
	switch {
	case len(p.Sabotage) == len(SabotageKinds):
		s += " --sabotage"
	case len(p.Sabotage) > 0:
		s += " --sabotage=" + strings.Join(p.Sabotage, ",")
	}
	return s
}

func (r *Runner) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("soak: "+format, args...)
}

// Run starts the cluster and runs every round: chaos, then heal,
// converge and check. It stops after the first round with a violation.
func (r *Runner) Run() *Report {
	t := r.t
	p := r.plan
	r.start = time.Now()
	r.log = NewLog(r.start)
	defer func() { r.report.Wall = time.Since(r.start) }()

	roles := make([]dtfc.Role, p.Nodes)
	nodeArgs := map[int][]string{}
	for i := range roles {
		roles[i] = cluster.RoleReplica
		if p.Cache(i) {
			roles[i] = cluster.RoleCache
			nodeArgs[i] = []string{"--max-bytes", fmt.Sprint(p.CacheMaxBytes)}
		}

	}
	args := []string{
		// A ?replicas=N upload waits at most this long for its 504.
		"--replicas-timeout", "10s",
		"--tombstone-retention", p.Retention.String(),
		"--tombstone-expiry", p.Expiry.String(),
		"--max-clock-offset", p.MaxClockOffset.String(),
		"--scrub-interval", p.ScrubInterval.String(),
		"--scrub-rate", fmt.Sprint(p.ScrubRate),
	}
	var extraPeers func(int) string
	if p.Archive {
		r.startArchive()
		for i := range roles {
			switch {
			case r.arch == nil:
				r.tier[i] = false // no archive, no tier
			case r.tier[i]:
				nodeArgs[i] = []string{"--max-bytes", fmt.Sprint(TierMaxBytes)}
			}
		}
		if ar := r.arch; ar != nil {
			args = append(args, "--archive-interval", ArchiveInterval.String())
			extraPeers = func(int) string { return ar.entry }
		}
	}
	r.c = cluster.Start(t, cluster.Options{
		Nodes:       p.Nodes,
		Roles:       roles,
		NodeArgs:    nodeArgs,
		Args:        args,
		ListSelf:    !p.NoListSelf,
		ListTwice:   !p.NoListTwice,
		SecondProxy: true,
		ExtraPeers:  extraPeers,
	})
	for _, n := range r.c.Nodes {
		r.urls = append(r.urls, n.URL)
		r.basedirs = append(r.basedirs, n.Basedir)
		r.up[n.Index].Store(true)
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
	}
	r.hc = &http.Client{Transport: tr}
	// Registered after the cluster's cleanup, so they run first: the
	// evidence is taken while the nodes' files are still there.
	t.Cleanup(tr.CloseIdleConnections)
	t.Cleanup(r.finish)
	if !p.NoFullDisk {
		if r.fullDisk = r.c.CanFillDisk(); r.fullDisk != nil {
			r.logf("full disk skipped: %v", r.fullDisk)
			r.report.Skipped = append(r.report.Skipped, fmt.Sprintf("full disk: %v", r.fullDisk))
		}
	}
	r.logf("cluster of %d nodes (%d caches of %d MiB) up in %v; tombstone retention %v, expiry %v, max clock offset %v, scrub every %v; peer lists: self %v, every peer twice %v",
		p.Nodes, p.Caches, p.CacheMaxBytes>>20, time.Since(r.start).Round(time.Millisecond), p.Retention, p.Expiry, p.MaxClockOffset,
		p.ScrubInterval, !p.NoListSelf, !p.NoListTwice)
	for i, tier := range r.tier {
		if tier {
			r.logf("node %d is a tier: a replica with --max-bytes %d MiB, evicting to the archive", i, TierMaxBytes>>20)
		}
	}

	for round := range p.Rounds() {
		r.round.Store(int64(round))
		if round > 0 && !p.NoMetaDamage {
			r.metaDamage(round)
		}
		r.chaos(round)
		r.settle(round)
		r.report.Rounds = round + 1
		if v := r.report.Violations(); len(v) > 0 && !p.KeepGoing {
			r.logf("round %d: %d violations; stopping", round, len(v))
			r.dumpStacks(v)
			break
		}
	}
	return r.report
}

// dumpStacks, after violations that say a node stopped making progress
// (a queue that never empties), has every node write its goroutines'
// stacks to its log (SIGQUIT), which the evidence keeps: what each
// pusher was waiting for.
func (r *Runner) dumpStacks(vs []Violation) {
	stuck := false
	for _, v := range vs {
		stuck = stuck || v.Kind == VQueue || v.Kind == VNotConverged
	}
	if !stuck {
		return
	}
	for _, n := range r.c.Nodes {
		if n.Quit() {
			r.logf("node %d: goroutine stacks written to its log (SIGQUIT)", n.Index)
		}
	}
}

// chaos runs one round: the workers' operations and the plan's faults.
func (r *Runner) chaos(round int) {
	p := r.plan
	soft, stop := context.WithCancel(context.Background())
	hard, cancel := context.WithCancel(context.Background())
	defer cancel()
	begin := time.Now()
	r.logf("round %d: %v of chaos, %d fault events", round, p.Round, len(p.Faults[round]))
	var wg sync.WaitGroup
	for w := range p.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(soft, hard, round, w)
		}()
	}
	// If a harness call fails the test, it ends this goroutine: stop
	// the workers before the cluster goes.
	defer func() {
		stop()
		cancel()
		wg.Wait()
		r.bg.Wait()
	}()
	for _, ev := range p.Faults[round] {
		time.Sleep(time.Until(begin.Add(ev.At)))
		r.apply(ev)
	}
	time.Sleep(time.Until(begin.Add(p.Round)))
	stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		r.logf("round %d: operations still in flight %v after the round; cancelling them", round, grace)
		cancel()
		<-done
	}
}

// worker runs worker w's stream until soft ends; hard cancels the
// operation in flight.
func (r *Runner) worker(soft, hard context.Context, round, w int) {
	s := r.streams[w]
	for soft.Err() == nil {
		op := s.Next()
		r.do(hard, round, op)
		select {
		case <-soft.Done():
		case <-time.After(op.Pause):
		}
	}
}

// target chooses the node for op: its planned one, or the next running
// one if that is down and op is not stubborn. In a clock-skew window a
// write goes to the worker's home node instead (see skew.go).
func (r *Runner) target(op Op, w *skewWindow) (node int, url, note string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := len(r.urls)
	if w != nil && op.Kind != OpRead {
		i := w.home(op.Worker, n)
		return i, r.urls[i], fmt.Sprintf("[skew window of node %d: through home node %d]", w.node, i)
	}
	i := op.Node % n
	if !op.Stubborn {
		for k := range n {
			if j := (i + k) % n; r.up[j].Load() && (op.Kind == OpRead || !r.noWrites[j].Load()) {
				i = j
				break
			}
		}
	}
	return i, r.urls[i], ""
}

func (r *Runner) do(ctx context.Context, round int, op Op) {
	win := r.activeWindow()
	if (op.Kind == OpBlock || op.Kind == OpLift) && win != nil {
		// Every node applying a block deletes with its own clock: no
		// blocks while the clocks may disagree.
		op.Kind = OpRead
	}
	node, url, note := r.target(op, win)
	id := r.ids.Of(op.File)
	o := &opRun{ctx: ctx, op: op, node: node, url: url, id: id, note: note,
		line: Line{Round: round, Actor: fmt.Sprintf("worker %d", op.Worker), Kind: op.Kind, Node: node, Peer: -1,
			File: op.File.Index, ID: id, Size: op.File.Size}}
	o.begin = time.Now()
	o.line.T = r.log.Since(o.begin)
	switch op.Kind {
	case OpUpload, OpReupload:
		r.doUpload(o)
	case OpDelete:
		r.doDelete(o)
	case OpBlock:
		out, res := r.deny(ctx, url, id, true)
		r.record(o, OpBlock, out, res)
	case OpLift:
		out, res := r.deny(ctx, url, id, false)
		r.record(o, OpLift, out, res)
	case OpRead:
		r.doRead(o)
	}
}

// opRun is an operation a worker is doing, with its line of the log.
type opRun struct {
	ctx           context.Context
	op            Op
	node          int
	url, id, note string
	line          Line
	begin         time.Time
}

// record logs the write o did and records it in the ledger; an
// acknowledged one with the state the node now holds.
func (r *Runner) record(o *opRun, kind Kind, out Outcome, res string) {
	w := Write{Kind: kind, Outcome: out}
	if out == Acked {
		// The state the node now holds is this write's: the worker
		// is the only one writing the ID.
		if st, err := r.readState(o.ctx, o.node, o.url, o.id); err == nil && st.Code == http.StatusOK {
			w.Stamp = &st.Stamp
			res += " [" + r.showStamp(st.Stamp) + "]"
		}
	}
	o.line.Dur, o.line.Result = time.Since(o.begin), res
	o.line.Detail = strings.TrimSpace(o.line.Detail + " " + o.note)
	w.Seq = r.log.Add(o.line)
	r.ledger.Record(o.id, o.op.File, o.op.Worker, w)
	r.report.countOp(o.op.Kind, out.String())
	if out == Acked && r.cache[o.node] {
		r.report.countOp(o.op.Kind, "acked by a cache")
	}
}

// doUpload uploads (or uploads again) o's file, checking the replicas it
// asked for.
func (r *Runner) doUpload(o *opRun) {
	out, res := r.upload(o.ctx, o.url, o.id, o.op, &o.line)
	if out == Acked && o.op.Replicas > 0 && !strings.HasPrefix(res, "504") {
		if v := r.checkReplicas(o.id, o.op.Replicas); v != nil {
			v.Node = o.node
			v.Detail += fmt.Sprintf(", after %s %s", o.line.Detail, res)
			r.report.Violate(*v)
			res += " [" + v.Detail + "]"
		}
	}
	r.record(o, OpUpload, out, res)
	if out == Acked {
		r.report.addAcked(o.op.File.Size)
	}
}

// doDelete deletes o's file; a 404 for an acknowledged upload is a
// violation.
func (r *Runner) doDelete(o *opRun) {
	pre, _ := r.ledger.Model(o.id)
	out, res := r.delete(o.ctx, o.url, o.id)
	if out == Refused && strings.HasPrefix(res, "404") && pre.State == Present && pre.Deny != Blocked {
		// Consistency 9: 404 only when every peer answered that it
		// does not know the ID; an acknowledged upload is known.
		r.report.Violate(Violation{Invariant: 0, Kind: VDelete404, Node: o.node, ID: o.id,
			Detail: fmt.Sprintf("file %d, its upload acknowledged at event %d: DELETE answered %s", o.op.File.Index, pre.Decider.Seq, res)})
		res += " [VIOLATION: the upload was acknowledged]"
	}
	r.record(o, OpDelete, out, res)
}

// doRead reads o's file back; wrong bytes are a violation, unless the
// node's copy is known to be corrupt on disk and not yet repaired.
func (r *Runner) doRead(o *opRun) {
	class, res, v := r.read(o.ctx, o.url, o.id, o.op, &o.line)
	if v != nil && r.excused(o.node, o.id, o.op.File.Size, res) {
		class, res = class+" (excused)", res+" [excused: this node's copy was corrupted on disk and not yet repaired; API.md Consistency 5]"
		r.report.countExcused()
		v = nil
	}
	o.line.Dur, o.line.Result = time.Since(o.begin), res
	o.line.Detail = strings.TrimSpace(o.line.Detail + " " + o.note)
	seq := r.log.Add(o.line)
	r.report.countOp(o.op.Kind, class)
	if v != nil {
		v.Node = o.node
		v.Detail += fmt.Sprintf(", event %d", seq)
		r.report.Violate(*v)
	}
}

// checkReplicas counts the replicas whose disk holds id right after an
// upload with ?replicas=want was acknowledged (a replica's answer to a
// push comes after the file is in place, and only this worker removes
// the ID): fewer than want is a violation of Consistency 11.
func (r *Runner) checkReplicas(id string, want int) *Violation {
	r.mu.RLock()
	dirs := slices.Clone(r.basedirs)
	r.mu.RUnlock()
	var holders []int
	for i, dir := range dirs {
		if r.cache[i] {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "blobs", id[:2], id[2:4], id)); err == nil {
			holders = append(holders, i)
		} else if _, err := os.Stat(filepath.Join(dir, "unconfirmed", id[:2], id[2:4], id)); err == nil {
			// Set aside by a block that came after the answer: the
			// bytes are still on this disk, and a lift brings them back.
			holders = append(holders, i)
		} else if r.tier[i] && r.archiveHolds(id) {
			holders = append(holders, i) // evicted already: its archive holds it
		}
	}
	if len(holders) >= want {
		return nil
	}
	return &Violation{Invariant: 0, Kind: VReplicasShort, ID: id,
		Detail: fmt.Sprintf("%d replicas asked, %d held the file right after the answer: nodes %v", want, len(holders), holders)}
}

// refused reports an error from a connection that never opened: the
// request cannot have been applied.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func errText(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

// upload sends op's file and classifies the answer.
func (r *Runner) upload(ctx context.Context, url, id string, op Op, line *Line) (Outcome, string) {
	ctx, cancel := context.WithTimeout(ctx, uploadTimeout)
	defer cancel()
	name := fmt.Sprintf("f%d.bin", op.File.Index)
	method, path := http.MethodPut, "/"+name
	switch op.Variant {
	case PutID:
		path = "/" + id
	case Post:
		method, path = http.MethodPost, "/"
	}
	if op.Replicas > 0 {
		path += fmt.Sprintf("?replicas=%d", op.Replicas)
	}
	var body io.Reader = op.File.Reader()
	if op.Chunked {
		body = io.MultiReader(body) // hides the length: sent chunked
	}
	req, err := http.NewRequestWithContext(ctx, method, url+path, body)
	if err != nil {
		return Refused, errText(err)
	}
	switch {
	case op.Chunked:
		req.ContentLength = -1
	case op.File.Size == 0:
		req.Body, req.ContentLength = http.NoBody, 0
	default:
		req.ContentLength = op.File.Size
	}
	if op.Variant == Post {
		req.Header.Set("X-Filename", name)
	}
	if op.SHA {
		req.Header.Set("X-Content-SHA512", id)
	}
	line.Detail = fmt.Sprintf("%s %s", method, strings.Replace(path, id, "<id>", 1))
	if op.Chunked {
		line.Detail += " chunked"
	}
	if op.SHA {
		line.Detail += " +sha"
	}
	a, out, why := r.send(req)
	if a == nil {
		return out, why
	}
	msg := fmt.Sprintf("%d", a.status)
	switch {
	case a.status == http.StatusOK || a.status == http.StatusCreated:
		var ans struct {
			SHA512 string `json:"sha512"`
			Size   int64  `json:"size"`
		}
		if err := json.Unmarshal(a.body, &ans); err != nil || ans.SHA512 != id || ans.Size != op.File.Size {
			r.report.Violate(Violation{Invariant: 0, Kind: VWrongAnswer, Node: line.Node, ID: id,
				Detail: fmt.Sprintf("answered %d %s", a.status, strings.TrimSpace(string(a.body)))})
		}
		return Acked, msg
	case a.status == http.StatusGatewayTimeout && op.Replicas > 0:
		// API.md: the file is kept and still replicates.
		return Acked, msg + " (replicas: kept)"
	}
	msg += " " + strings.TrimSpace(string(a.body))
	switch {
	case a.status >= 400 && a.status < 500 && op.Replicas > 0 && strings.Contains(msg, "the file is stored"):
		// Stored, then the wait for the replicas failed: too few
		// replicas, found after the upload (the peer list shrank
		// meanwhile; usually that is refused before a byte is read,
		// "nothing stored"), or the ID blocked meanwhile (the
		// upload, newer than the block, kept aside until a lift).
		return Maybe, msg
	case a.status >= 400 && a.status < 500, a.status == http.StatusInsufficientStorage:
		return Refused, msg
	}
	return Maybe, msg
}

// delete deletes id and classifies the answer: 200 acknowledged; a 4xx
// (404: neither the node nor a reachable peer knows the ID; no tombstone
// is recorded) refused; no answer or another status maybe.
func (r *Runner) delete(ctx context.Context, url, id string) (Outcome, string) {
	return r.change(ctx, http.MethodDelete, url+"/"+id, nil)
}

// deny blocks id (with BlockStatus) or lifts its block, and classifies
// the answer: 200 acknowledged; a 4xx (a lift's 404: not blocked on that
// node) refused; no answer or another status maybe.
func (r *Runner) deny(ctx context.Context, url, id string, block bool) (Outcome, string) {
	method, body := http.MethodDelete, io.Reader(nil)
	if block {
		method, body = http.MethodPut, strings.NewReader(fmt.Sprintf(`{"status": %d, "reason": "soak"}`, BlockStatus))
	}
	return r.change(ctx, method, url+"/_deny/"+id, body)
}

// change sends a delete or a deny (within deleteTimeout) and classifies
// the answer: 200 acknowledged; a 4xx refused; no answer or another
// status maybe.
func (r *Runner) change(ctx context.Context, method, url string, body io.Reader) (Outcome, string) {
	ctx, cancel := context.WithTimeout(ctx, deleteTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return Refused, errText(err)
	}
	a, out, why := r.send(req)
	if a == nil {
		return out, why
	}
	switch {
	case a.status == http.StatusOK:
		return Acked, "200"
	case a.status >= 400 && a.status < 500:
		return Refused, fmt.Sprintf("%d %s", a.status, strings.TrimSpace(string(a.body)))
	}
	return Maybe, fmt.Sprintf("%d %s", a.status, strings.TrimSpace(string(a.body)))
}

// answer is a node's answer to a write: its status, and the first 64 KiB
// of its body.
type answer struct {
	status int
	body   []byte
}

// send sends the write req and reads the answer. With none, it returns
// a nil answer and the write's outcome: refused if the connection was,
// else maybe.
func (r *Runner) send(req *http.Request) (*answer, Outcome, string) {
	res, err := r.hc.Do(req)
	if err != nil {
		if refused(err) {
			return nil, Refused, "refused: " + errText(err)
		}
		return nil, Maybe, "error: " + errText(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	return &answer{status: res.StatusCode, body: b}, 0, ""
}

// read GETs id, hashing what comes; a complete 200 of other bytes is a
// violation of invariant 5 (and a complete 206 of wrong bytes is one too).
func (r *Runner) read(ctx context.Context, url, id string, op Op, line *Line) (class, result string, v *Violation) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	u := url + "/" + id
	if op.NoPeer {
		u += "?nopeerload=1"
		line.Detail = "nopeerload"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "error", errText(err), nil
	}
	if op.RangeLen > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", op.RangeOff, op.RangeOff+op.RangeLen-1))
		line.Detail = strings.TrimSpace(line.Detail + " " + req.Header.Get("Range"))
	}
	res, err := r.hc.Do(req)
	if err != nil {
		if refused(err) {
			return "refused", "refused: " + errText(err), nil
		}
		return "error", "error: " + errText(err), nil
	}
	defer res.Body.Close()
	src := res.Header.Get("X-Dtfc-Source")
	switch res.StatusCode {
	case http.StatusOK:
		h := sha512.New()
		n, err := io.Copy(h, res.Body)
		if err != nil {
			return "200 aborted", fmt.Sprintf("200 (%s) aborted after %d bytes: %s", src, n, errText(err)), nil
		}
		sum := hex.EncodeToString(h.Sum(nil))
		if sum != id {
			return "200 WRONG", fmt.Sprintf("200 (%s) %d bytes hashing to %s", src, n, short(sum)),
				&Violation{Invariant: 5, Kind: VWrongServed, ID: id,
					Detail: fmt.Sprintf("%d bytes from source %q hash to %s", n, src, short(sum))}
		}
		return "200 verified", fmt.Sprintf("200 (%s) verified", src), nil
	case http.StatusPartialContent:
		got, err := io.ReadAll(io.LimitReader(res.Body, 2<<20))
		if err != nil {
			return "206 aborted", fmt.Sprintf("206 (%s) aborted after %d bytes: %s", src, len(got), errText(err)), nil
		}
		var start, end, size int64
		if _, err := fmt.Sscanf(res.Header.Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &size); err != nil ||
			start != op.RangeOff || end-start+1 != int64(len(got)) || size != op.File.Size ||
			string(got) != string(op.File.Slice(start, end-start+1)) {
			return "206 WRONG", fmt.Sprintf("206 (%s) Content-Range %q, %d bytes, not the file's", src, res.Header.Get("Content-Range"), len(got)),
				&Violation{Invariant: 5, Kind: VWrongRange, ID: id,
					Detail: fmt.Sprintf("Content-Range %q from source %q: not the file's bytes", res.Header.Get("Content-Range"), src)}
		}
		return "206 verified", fmt.Sprintf("206 (%s) verified", src), nil
	}
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return fmt.Sprint(res.StatusCode), fmt.Sprintf("%d %s", res.StatusCode, msg), nil
}

// apply applies one fault event, on the test goroutine.
func (r *Runner) apply(ev Event) {
	c := r.c
	line := Line{Round: ev.Round, Actor: "fault", Kind: ev.Kind, Node: ev.Node, Peer: ev.Peer, File: -1,
		Detail: strings.TrimPrefix(ev.String(), fmt.Sprintf("round %d ", ev.Round))}
	begin := time.Now()
	line.T = r.log.Since(begin)
	defer func() {
		line.Dur = time.Since(begin)
		r.log.Add(line)
	}()
	switch ev.Kind {
	case FaultS3Stop, FaultS3Start, FaultBucketNode:
		if r.applyArchive(ev, &line) && slices.Contains(faultStarts, ev.Kind) {
			r.report.countFault(ev.Kind)
		}
		return
	}
	if ev.Kind == FaultAddNode {
		nn := c.AddNode(cluster.RoleReplica)
		r.mu.Lock()
		r.urls = append(r.urls, nn.URL)
		r.basedirs = append(r.basedirs, nn.Basedir)
		r.mu.Unlock()
		r.up[nn.Index].Store(true)
		line.Result = fmt.Sprintf("node %d joined at %s", nn.Index, nn.URL)
		r.report.countFault(ev.Kind)
		return
	}
	if ev.Node >= len(c.Nodes) || ev.Peer >= len(c.Nodes) {
		line.Result = fmt.Sprintf("skipped: the cluster has %d nodes", len(c.Nodes))
		return
	}
	n := c.Nodes[ev.Node]
	counted := slices.Contains(faultStarts, ev.Kind)
	var applied bool
	switch ev.Kind {
	case FaultKill, FaultStop, FaultLongKill, FaultLongStop, FaultRestart:
		applied = r.applyProcess(ev, n, &line)
	case FaultFillDisk, FaultFreeDisk:
		applied = r.applyDisk(ev, n, &line)
	case FaultSkewFar, FaultSkew:
		r.skew(ev, &line)
		applied = true
	case FaultUnskew:
		r.unskew(ev, &line)
		applied = true
	case FaultFlip:
		applied = r.flip(ev, &line)
	case FaultLeave, FaultRejoin:
		applied = r.membership(ev, &line)
	default:
		r.applyLink(ev)
		applied = true
	}
	if counted && applied {
		r.report.countFault(ev.Kind)
	}
}

// membership makes node ev.Node leave the cluster (FaultLeave: the
// workers stop sending it writes until it is added again, then PUT
// /_members of itself first, so that a cluster of peer lists has its
// records, then DELETE /_members of itself, retried while it answers 409
// because its replicas have not taken its feed) or adds it again
// (FaultRejoin, through another running node). It reports false for what
// could not be done: a leave of a node that is down or not drained
// within 10 s is skipped, a rejoin left to the heal.
func (r *Runner) membership(ev Event, line *Line) bool {
	c := r.c
	node := c.Nodes[ev.Node].URL
	if ev.Kind == FaultLeave {
		if !c.Nodes[ev.Node].Running() {
			line.Result = "skipped: not running"
			return false
		}
		r.noWrites[ev.Node].Store(true)
		if _, err := r.member(node, http.MethodPut, node); err != nil {
			r.noWrites[ev.Node].Store(false)
			line.Result = "skipped: " + err.Error()
			return false
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			res, err := r.member(node, http.MethodDelete, node)
			if err == nil {
				r.removed[ev.Node] = true
				line.Result = res
				return true
			}
			if !strings.Contains(err.Error(), ": 409 ") || time.Now().After(deadline) {
				r.noWrites[ev.Node].Store(false)
				line.Result = "skipped: " + err.Error()
				return false
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if !r.removed[ev.Node] {
		line.Result = "skipped: not removed"
		return false
	}
	var tried []string
	for j, n := range c.Nodes {
		if j == ev.Node || !n.Running() {
			continue
		}
		res, err := r.member(n.URL, http.MethodPut, node)
		if err == nil {
			delete(r.removed, ev.Node)
			r.noWrites[ev.Node].Store(false)
			line.Result = fmt.Sprintf("through node %d: %s", j, res)
			return true
		}
		if strings.Contains(err.Error(), "join it as a new node") {
			// Out longer than the expiry: the runbook's way back.
			r.rejoinAsNew(ev.Node, line)
			return false
		}
		tried = append(tried, fmt.Sprintf("node %d: %v", j, err))
	}
	line.Result = "not done: " + strings.Join(tried, "; ")
	return false
}

// rejoinAsNew empties the basedir of a node removed longer than the
// expiry and starts it again: a new node (a new identity), which the
// next rejoin adds and anti-entropy fills. It held nothing acknowledged
// that its replicas had not taken (it left only once they had, and took
// no writes since).
func (r *Runner) rejoinAsNew(node int, line *Line) {
	n := r.c.Nodes[node]
	n.Stop()
	if err := os.RemoveAll(n.Basedir); err != nil {
		r.t.Fatalf("soak: emptying node %d: %v", node, err)
	}
	n.Start()
	r.up[node].Store(true)
	line.Result = fmt.Sprintf("node %d was out longer than the expiry: emptied, started as a new node", node)
}

// member sends PUT /_members {"url": node} or DELETE /_members?url=node
// to the node at via.
func (r *Runner) member(via, method, node string) (string, error) {
	path, body := "/_members", `{"url":"`+node+`"}`
	if method == http.MethodDelete {
		path, body = "/_members?url="+url.QueryEscape(node), ""
	}
	status, err := r.call(method, via+path, body, 15*time.Second)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s: %s", method, path, status), nil
}

// rejoinAll adds again every node removed and not yet added (its rejoin
// found it down), trying for up to a minute: the round's check needs
// every node back in the cluster.
func (r *Runner) rejoinAll(round int) {
	for node := range r.removed {
		deadline := time.Now().Add(time.Minute)
		line := Line{Round: round, Actor: "check", Kind: FaultRejoin, Node: node, Peer: -1, File: -1}
		begin := time.Now()
		for r.removed[node] && time.Now().Before(deadline) {
			if !r.membership(Event{Round: round, Kind: FaultRejoin, Node: node, Peer: -1}, &line) {
				time.Sleep(500 * time.Millisecond)
			}
		}
		line.T, line.Dur = r.log.Since(begin), time.Since(begin)
		r.log.Add(line)
	}
}

// applyProcess kills, stops or restarts node n. It reports false for a
// fault skipped (the node is not running), which is not counted.
func (r *Runner) applyProcess(ev Event, n *cluster.Node, line *Line) bool {
	if ev.Kind == FaultRestart {
		if !n.Running() {
			n.Start()
		}
		r.up[ev.Node].Store(true)
		return true
	}
	if !n.Running() {
		line.Result = "skipped: not running"
		return false
	}
	r.up[ev.Node].Store(false)
	if ev.Kind == FaultKill || ev.Kind == FaultLongKill {
		n.Kill()
	} else {
		n.Stop()
	}
	return true
}

// applyLink applies a fault of the links between nodes (any other kind
// does nothing).
func (r *Runner) applyLink(ev Event) {
	c := r.c
	switch ev.Kind {
	case FaultPartition, FaultLongPartition:
		r.cut(ev.Episode, ev.Node, ev.Peer)
		r.cut(ev.Episode, ev.Peer, ev.Node)
	case FaultIsolate, FaultLongIsolate:
		for j := range c.Nodes {
			if j != ev.Node {
				r.cut(ev.Episode, ev.Node, j)
				r.cut(ev.Episode, j, ev.Node)
			}
		}
	case FaultCut:
		r.cut(ev.Episode, ev.Node, ev.Peer)
	case FaultUncut:
		for _, l := range r.episodes[ev.Episode] {
			r.cuts[l]--
			if r.cuts[l] == 0 {
				c.Uncut(l[0], l[1])
			}
		}
		delete(r.episodes, ev.Episode)
	// Delay and Throttle rather than Latency and Bandwidth: removing a
	// toxiproxy toxic can hang for good when a node behind the link
	// restarts meanwhile (see internal/cluster/slow.go).
	case FaultLatency:
		c.Delay(ev.Node, ev.Peer, ev.Latency)
	case FaultBandwidth:
		c.Throttle(ev.Node, ev.Peer, ev.Rate)
	case FaultUnslow:
		c.Delay(ev.Node, ev.Peer, 0)
		c.Throttle(ev.Node, ev.Peer, 0)
	case FaultCorrupt:
		l := [2]int{ev.Node, ev.Peer}
		r.corrupt[l]++
		c.Corrupt(l[0], l[1], true)
	case FaultClean:
		l := [2]int{ev.Node, ev.Peer}
		if r.corrupt[l]--; r.corrupt[l] <= 0 {
			delete(r.corrupt, l)
			c.Corrupt(l[0], l[1], false)
		}
	}
}

// applyDisk fills node n's disk, or frees it. It reports false for a fill
// skipped (a disk cannot be filled, or the node is not running), which is
// not counted.
func (r *Runner) applyDisk(ev Event, n *cluster.Node, line *Line) bool {
	c := r.c
	if ev.Kind == FaultFreeDisk {
		if !c.OnTmpfs(ev.Node) {
			line.Result = "skipped: not on a tmpfs"
			return true
		}
		line.Result = fmt.Sprintf("%d KiB were free", freeBytes(n.Basedir)>>10)
		r.up[ev.Node].Store(false)
		c.FreeDisk(ev.Node)
		r.up[ev.Node].Store(n.Running())
		return true
	}
	switch {
	case r.fullDisk != nil:
		line.Result = "skipped: " + r.fullDisk.Error()
		return false
	case !n.Running():
		line.Result = "skipped: not running"
		return false
	}
	// Stopped first, so that nothing grows between the measure and the
	// copy (FillDisk starts it again).
	r.up[ev.Node].Store(false)
	n.Stop()
	used := c.DiskUsage(ev.Node)
	size := (used+ev.Margin)/1024 + 256 // KiB
	c.FillDisk(ev.Node, fmt.Sprintf("%dk", size))
	r.up[ev.Node].Store(true)
	line.Result = fmt.Sprintf("node %d on a tmpfs of %d MiB (%d MiB used, %d KiB free)", ev.Node, size>>10, used>>20, freeBytes(n.Basedir)>>10)
	return true
}

// cut cuts the link from -> to for an episode, counting the episodes that
// want it cut.
func (r *Runner) cut(episode, from, to int) {
	l := [2]int{from, to}
	r.episodes[episode] = append(r.episodes[episode], l)
	r.cuts[l]++
	if r.cuts[l] == 1 {
		r.c.Cut(from, to)
	}
}

// settle ends a round: heal everything, put every clock back, restart
// every node, wait for convergence, then check the invariants.
func (r *Runner) settle(round int) {
	healed := r.healAll(round)
	conv, waited := r.converge(round, healed)
	if len(r.plan.Sabotage) > 0 && round == 0 {
		r.sabotage(round)
	}

	// Invariants 1-4 on every node's disk and /_status.
	checkStart := time.Now()
	views := r.nodeViews()
	// With the archive, a relay may apply states after the cluster
	// converged (archive.go, stirred): queues found not empty then are
	// waited for again, a few times, before they count as a violation.
	for try := 0; r.arch != nil && try < 3 && queued(views); try++ {
		r.arch.stirred++
		if _, why, _ := r.waitConverged(r.plan.Converge); why != "" {
			break
		}
		views = r.nodeViews()
	}
	scanned := time.Since(checkStart)
	entries := r.ledger.Entries()
	violations, states, lists := r.check(round, entries, views, scanned)
	// Invariant 7 (archive.go), before resolve and the uploads of lifted
	// IDs change the ledger and the cluster.
	violations = append(violations, r.checkArchive(round, entries, states, views)...)
	r.report.Violate(violations...)
	r.report.addStates(int64(len(states) * len(r.c.Nodes)))
	if round == 0 && len(r.sabotaged) > 0 {
		r.verifySabotage(violations)
	}
	r.resolve(round, entries, views, lists)
	lifted := r.uploadLifted(round)

	r.report.Corrupted = r.corrupted()
	counts := r.ledger.Counts()
	r.logf("round %d: converged in %v%s; checked %d nodes, %d IDs (%d present, %d absent, %d unknown; %d states) in %v: %d violations; %s",
		round, conv.Round(10*time.Millisecond), waited, len(views), len(entries), counts[Present], counts[Absent], counts[Unknown],
		len(states)*len(r.c.Nodes), time.Since(checkStart).Round(10*time.Millisecond), len(violations), lifted)
	r.log.Add(Line{T: r.log.Since(checkStart), Dur: time.Since(checkStart), Round: round, Actor: "check", Kind: "invariants", Node: -1, Peer: -1, File: -1,
		Result: fmt.Sprintf("%d violations", len(violations))})
}

// healAll heals every link, puts every clock right and brings every node
// up; it returns when that was done.
func (r *Runner) healAll(round int) (healed time.Time) {
	c := r.c
	begin := time.Now()
	c.HealAll()
	r.cuts, r.corrupt, r.episodes = map[[2]int]int{}, map[[2]int]int{}, map[int][][2]int{}
	for i := range r.skewed {
		c.Nodes[i].SetClock(0)
	}
	r.skewed = map[int]time.Duration{}
	r.window.Store(nil)
	for i, n := range c.Nodes {
		if c.OnTmpfs(i) {
			c.FreeDisk(i)
		}
		if !n.Running() {
			n.Start()
		}
		r.up[i].Store(true)
	}
	r.rejoinAll(round)
	if r.arch != nil {
		var line Line
		r.startS3(&line)
	}
	healed = time.Now()
	r.log.Add(Line{T: r.log.Since(begin), Dur: healed.Sub(begin), Round: round, Actor: "check", Kind: "heal-all", Node: -1, Peer: -1, File: -1,
		Result: "every link healed, every clock right, every node up"})
	return healed
}

// converge waits for the cluster to converge (invariant 4), a violation
// if it does not; it returns how long it took, and what it waited for
// longest.
func (r *Runner) converge(round int, healed time.Time) (conv time.Duration, waited string) {
	conv, why, waited := r.waitConverged(r.plan.Converge)
	if why != "" {
		kind := VNotConverged
		if strings.Contains(why, "resyncing") {
			kind = VResyncing
		}
		r.report.Violate(Violation{Invariant: 4, Kind: kind, Node: -1, Detail: fmt.Sprintf("after %v: %s", r.plan.Converge, why)})
	} else {
		r.report.Converge = append(r.report.Converge, conv)
	}
	r.log.Add(Line{T: r.log.Since(healed), Dur: conv, Round: round, Actor: "check", Kind: "converge", Node: -1, Peer: -1, File: -1,
		Result: map[bool]string{true: "converged", false: "NOT converged: " + why}[why == ""] + waited})
	return conv, waited
}

// nodeViews scans every node's disk and reads its /_status.
func (r *Runner) nodeViews() []NodeView {
	var views []NodeView
	for i, n := range r.c.Nodes {
		v := NodeView{Index: i, Cache: r.cache[i], Tier: r.tier[i], StatusBlobs: -1, Queues: map[string]int64{}}
		var hashed int64
		v.Files, v.Strays, v.Temp, hashed, v.Err = ScanNode(n.Basedir, r.hashes[i])
		r.report.Hashed += hashed
		if st, err := r.c.Status(i); err != nil {
			v.Err = errors.Join(v.Err, err)
		} else {
			v.fromStatus(st)
			if st.Blobs != int64(len(v.Files)) {
				v.Unheld = r.unheld(i, v.Files)
			}
		}
		views = append(views, v)
	}
	return views
}

// unheld returns the IDs node i lists (GET /_blobs) that have no file
// in files.
func (r *Runner) unheld(i int, files map[string]FileView) []string {
	var out []string
	after := ""
	for range 1000 {
		var page struct {
			Blobs []struct {
				ID string `json:"sha512"`
			} `json:"blobs"`
			Next string `json:"next"`
		}
		if err := r.c.GetJSON(i, "/_blobs?limit=10000&after="+after, &page); err != nil {
			return append(out, "(listing failed: "+err.Error()+")")
		}
		for _, b := range page.Blobs {
			if _, ok := files[b.ID]; !ok {
				out = append(out, b.ID)
			}
		}
		if after = page.Next; after == "" {
			break
		}
	}
	return out
}

// check checks the invariants on the views (1-4), the states fetched
// (6, the model check), the deny lists and the reads back, and that every
// node still runs; it logs how long each phase took (scanned: the views).
func (r *Runner) check(round int, entries map[string]Entry, views []NodeView, scanned time.Duration) ([]Violation, map[string][]NodeState, []DenyView) {
	c := r.c
	violations := Check(views, entries)
	// Invariant 6, the model check, and the deny lists.
	t0 := time.Now()
	states := r.fetchStates(entries)
	r.tierHolds(states)
	violations = append(violations, CheckStates(states, r.cache[:len(c.Nodes)], entries, r.nodeName)...)
	lists := r.fetchDeny()
	violations = append(violations, CheckDeny(lists, entries)...)
	modelled := time.Since(t0)
	t0 = time.Now()
	violations = append(violations, r.readBack(entries, views)...)
	violations = append(violations, r.checkMembers()...)
	r.logf("round %d: check phases: disks and /_status %v, states and deny lists %v, reads %v",
		round, scanned.Round(10*time.Millisecond), modelled.Round(10*time.Millisecond), time.Since(t0).Round(10*time.Millisecond))
	for i, n := range c.Nodes {
		if !n.Running() {
			violations = append(violations, Violation{Invariant: 0, Kind: VCrash, Node: i})
		}
	}
	return violations, states, lists
}

// corrupted counts the bodies the links between nodes have corrupted.
func (r *Runner) corrupted() int64 {
	var corrupted int64
	for i := range r.c.Nodes {
		for j := range r.c.Nodes {
			if i != j {
				corrupted += r.c.Corrupted(i, j)
			}
		}
	}
	return corrupted
}

// resyncing reads cluster.resyncing (and cluster.resync, if any) from a
// /_status answer.
func resyncing(st *api.Status) (bool, string) {
	if st.Cluster == nil {
		return false, ""
	}
	rs := st.Cluster.Resync
	if st.Cluster.Resyncing || (rs.State != "" && rs.State != api.ResyncInSync) {
		b, _ := json.Marshal(rs)
		return true, " (resync: " + string(b) + ")"
	}
	return false, ""
}

// resolve fixes, after a check, every Unknown ID to the state the
// replicas show when they agree, and every unknown block to what the
// deny lists show when they agree.
func (r *Runner) resolve(round int, entries map[string]Entry, views []NodeView, lists []DenyView) {
	var replicas []NodeView
	for _, v := range views {
		if !v.Cache && v.Err == nil {
			replicas = append(replicas, v)
		}
	}
	readable := 0
	for _, l := range lists {
		if l.Err == nil {
			readable++
		}
	}
	r.report.FinalIDs = map[Want]int{}
	for _, id := range sortedIDs(entries) {
		e := entries[id]
		m := e.Model()
		if m.Deny == DenyUnknown && readable > 0 {
			n := 0
			for _, l := range lists {
				if _, ok := l.Entries[id]; ok && l.Err == nil {
					n++
				}
			}
			if n == 0 || n == readable {
				seq := r.log.Add(Line{T: r.log.Since(time.Now()), Round: round, Actor: "check", Kind: "resolve", Node: -1, Peer: -1,
					File: e.File.Index, ID: id, Size: e.File.Size, Result: map[bool]string{true: "blocked everywhere", false: "blocked nowhere"}[n > 0]})
				r.ledger.ResolveDeny(id, n > 0, seq)
			}
		}
		if m.State == Unknown && len(replicas) > 0 {
			// Take what the cluster shows as the state from now on
			// (if it shows one state).
			held := 0
			for _, v := range replicas {
				if _, ok := v.Files[id]; ok {
					held++
				}
			}
			if held == 0 || held == len(replicas) {
				seq := r.log.Add(Line{T: r.log.Since(time.Now()), Round: round, Actor: "check", Kind: "resolve", Node: -1, Peer: -1,
					File: e.File.Index, ID: id, Size: e.File.Size, Result: map[bool]string{true: "present everywhere", false: "absent everywhere"}[held > 0]})
				r.ledger.Resolve(id, held > 0, seq)
			}
		}
		r.report.FinalIDs[m.State]++
	}
}

// countRE matches the numbers in a reason not to converge that change
// while it stays the same reason.
var countRE = regexp.MustCompile(`\b\d+( operations| entries)`)

// waitConverged polls until, on every node, every queue is empty, no node
// resyncs, the digests of every replica are the same (what
// cluster.WaitConverged waits for, without failing the test), and every
// blob flipped this round was repaired (or removed); it returns how long
// it took, or, on timeout, what still differs. waited says what it
// waited for longest.
func (r *Runner) waitConverged(timeout time.Duration) (took time.Duration, why, waited string) {
	begin := time.Now()
	deadline := begin.Add(timeout)
	var longest time.Duration
	last, since := "", begin
	defer func() {
		if d := time.Since(since); last != "" && d > longest {
			longest, waited = d, last
		}
		if waited != "" {
			waited = fmt.Sprintf("; waited %v on: %s", longest.Round(100*time.Millisecond), waited)
		}
	}()
	// With the archive, the relays keep reading the bucket: converged
	// means so for a while, the replicas' digests unchanged (see
	// quietFor).
	var quietSince time.Time
	quietSums := ""
	for {
		why, sums := r.notConverged()
		if why == "" && r.arch != nil {
			switch {
			case quietSince.IsZero() || sums != quietSums:
				if !quietSince.IsZero() {
					r.arch.stirred++
				}
				quietSince, quietSums = time.Now(), sums
				why = "quiet for less than " + quietFor.String()
			case time.Since(quietSince) < quietFor:
				why = "quiet for less than " + quietFor.String()
			}
		} else {
			if !quietSince.IsZero() && r.arch != nil {
				r.arch.stirred++
			}
			quietSince = time.Time{}
		}
		// The reason, without its numbers, to see how long one thing
		// was waited for.
		if countRE.ReplaceAllString(why, "N") != countRE.ReplaceAllString(last, "N") {
			if d := time.Since(since); last != "" && d > longest {
				longest, waited = d, last
			}
			last, since = why, time.Now()
		}
		if why == "" {
			return time.Since(begin), "", waited
		}
		if time.Now().After(deadline) {
			return time.Since(begin), why, waited
		}
		time.Sleep(pollEvery)
	}
}

// notConverged says what keeps the cluster from being converged now, or
// ""; and the replicas' digest sums when converged.
func (r *Runner) notConverged() (string, string) {
	c := r.c
	var ref *cluster.Digests
	refNode := -1
	for i, n := range c.Nodes {
		if !n.Running() {
			return fmt.Sprintf("node %d is not running", i), ""
		}
		st, err := c.Status(i)
		if err != nil {
			return fmt.Sprintf("node %d: %v", i, err), ""
		}
		if rs, info := resyncing(st); rs {
			return fmt.Sprintf("node %d is resyncing%s", i, info), ""
		}
		if st.Cluster != nil && st.Cluster.UnconfirmedPending > 0 {
			// Blobs of uploads cut by a kill, say: still to be adopted
			// (and pushed) or dropped.
			return fmt.Sprintf("node %d: %d unconfirmed blobs to ask its peers about again", i, st.Cluster.UnconfirmedPending), ""
		}
		for _, url := range sortedIDs(st.Queues) {
			if l := st.Queues[url].Length; l != 0 {
				return fmt.Sprintf("node %d: %v operations queued for %s%s", i, l, url, pusherNote(pusherStates(st)[url])), ""
			}
		}
		if r.cache[i] {
			continue // a cache holds what it pleases
		}
		d, err := c.Digests(i)
		if err != nil {
			return fmt.Sprintf("node %d: digests: %v", i, err), ""
		}
		if ref == nil {
			ref, refNode = d, i
		} else if d.Sums != ref.Sums || !slices.Equal(d.Counts, ref.Counts) {
			return fmt.Sprintf("node %d's digests (%d entries) differ from node %d's (%d entries)", i, d.Total(), refNode, ref.Total()), ""
		}
	}
	if ref == nil {
		return r.flipsPending(), ""
	}
	return r.flipsPending(), ref.Sums
}

// finish reports: the table always; on a violation or a failed test, the
// violations, the seed and how to replay, the events that matter, and the
// evidence kept in KeepDir. Violations fail the test.
func (r *Runner) finish() {
	t := r.t
	r.report.Wall = time.Since(r.start)
	for _, line := range strings.Split(strings.TrimSpace(r.report.Table()), "\n") {
		t.Log("soak: " + line)
	}
	violations := r.report.Violations()
	if len(violations) == 0 && !t.Failed() {
		if r.KeepDir != "" {
			if err := r.Keep(r.KeepDir, r.NodeLogs); err != nil {
				r.logf("keeping the event log in %s: %v", r.KeepDir, err)
			} else {
				r.logf("event log and plan in %s", r.KeepDir)
			}
		}
		r.logf("PASS seed %d: every invariant held", r.plan.Seed)
		return
	}
	ids := map[string]bool{}
	for _, v := range violations {
		if v.ID != "" {
			ids[v.ID] = true
		}
	}
	relevant := r.log.Relevant(ids)
	r.logf("FAIL seed %d: %d violations; the events that matter (every fault, every check, every operation on the %d IDs involved), %d of %d:",
		r.plan.Seed, len(violations), len(ids), len(relevant), len(r.log.Lines()))
	for _, line := range relevant {
		t.Log("soak:   " + line.String())
	}
	for i, v := range violations {
		if i == 200 {
			r.logf("... and %d more violations", len(violations)-i)
			break
		}
		t.Errorf("soak: %v", v)
	}
	if r.KeepDir != "" {
		if err := r.Keep(r.KeepDir, true); err != nil {
			r.logf("keeping the evidence in %s: %v", r.KeepDir, err)
		} else {
			r.logf("evidence (event log, plan, node logs) kept in %s", r.KeepDir)
		}
	}
	r.logf("FAIL seed %d; replay with: %s", r.plan.Seed, r.Replay())
}

// Keep writes the evidence of a soak into dir: the event log, the plan,
// the report and, if nodeLogs, every node's log.
func (r *Runner) Keep(dir string, nodeLogs bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "events.log"))
	if err != nil {
		return err
	}
	r.log.WriteTo(f)
	r.log.WriteTotals(f)
	if err := f.Close(); err != nil {
		return err
	}
	var plan strings.Builder
	for _, round := range r.plan.Faults {
		for _, ev := range round {
			fmt.Fprintln(&plan, ev)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "plan.txt"), []byte(plan.String()), 0o644); err != nil {
		return err
	}
	var report strings.Builder
	report.WriteString(r.report.Table())
	for _, v := range r.report.Violations() {
		fmt.Fprintln(&report, v)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(report.String()), 0o644); err != nil {
		return err
	}
	if r.c == nil || !nodeLogs {
		return nil
	}
	for _, n := range r.c.Nodes {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("node-%d.log", n.Index)), []byte(n.Log()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// freeBytes returns the bytes available on dir's filesystem, or -1.
func freeBytes(dir string) int64 {
	avail, _, err := diskspace.Of(dir)
	if err != nil {
		return -1
	}
	return int64(avail)
}
