package soak

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// Kind names an event of the soak: a client operation or a fault.
type Kind string

// Client operations, run by the workers.
const (
	OpUpload   Kind = "upload"   // a file never uploaded before
	OpReupload Kind = "reupload" // a file of the same worker again (after its delete, or while held)
	OpDelete   Kind = "delete"
	OpRead     Kind = "read"
	OpBlock    Kind = "block" // PUT /_deny/{id} with status 451
	OpLift     Kind = "lift"  // DELETE /_deny/{id}
)

// BlockStatus is the status every block of the soak asks for.
const BlockStatus = 451

// Faults, applied by the test goroutine. Each fault but AddNode is an
// episode: a start event and, later in the same round, its end event.
const (
	FaultKill      Kind = "kill"      // kill -9 a node ...
	FaultStop      Kind = "stop"      // ... or SIGTERM it ...
	FaultRestart   Kind = "restart"   // ... and start it again
	FaultPartition Kind = "partition" // cut both directions between two nodes
	FaultIsolate   Kind = "isolate"   // cut every link of a node
	FaultCut       Kind = "cut"       // cut one direction of a link
	FaultUncut     Kind = "uncut"     // end of a partition, isolation or cut
	FaultLatency   Kind = "latency"   // delay a link
	FaultBandwidth Kind = "bandwidth" // throttle a link
	FaultUnslow    Kind = "unslow"    // end of a latency or bandwidth episode
	FaultCorrupt   Kind = "corrupt"   // flip a byte of every body on a link
	FaultClean     Kind = "clean"     // end of a corruption episode
	FaultFillDisk  Kind = "fill-disk" // move a node onto a small tmpfs
	FaultFreeDisk  Kind = "free-disk" // and back onto the disk
	FaultAddNode   Kind = "add-node"  // join a new, empty replica

	// Outages planned longer than the tombstone retention (some longer
	// than the expiry), ended by FaultUncut or FaultRestart.
	FaultLongPartition Kind = "long-partition"
	FaultLongIsolate   Kind = "long-isolate"
	FaultLongStop      Kind = "long-stop"
	FaultLongKill      Kind = "long-kill"
	// A node's wall clock moved (Node.SetClock): beyond max_clock_offset
	// or within it, then back to 0 by FaultUnskew.
	FaultSkewFar Kind = "skew-far"
	FaultSkew    Kind = "skew"
	FaultUnskew  Kind = "unskew"
	// A byte of one blob file flipped in place on a node's disk, for
	// the scrubber to find (an instant, like AddNode).
	FaultFlip Kind = "bit-flip"
	// Between two rounds, a replica stopped, its meta.db removed,
	// truncated or half zeroed, and the runbook followed: the start is
	// refused, dtfc rebuild-meta, start (meta.go).
	FaultMetaDamage Kind = "meta-damage"
	// A replica leaves the cluster (DELETE /_members of itself, through
	// itself: refused until its replicas took its feed), then is added
	// again (PUT /_members): meanwhile it takes no writes and is pushed
	// nothing, deletes are forgotten without it, and once back it
	// resyncs. A rejoin that cannot be done (the node is down) is done
	// when the round heals; if it has been out longer than the expiry by
	// then, it is emptied and joins as a new node, as the runbook says.
	FaultLeave  Kind = "leave"
	FaultRejoin Kind = "rejoin"
	// With Config.Archive (archive.go): the S3 server behind every
	// node's archive peer stopped, then started again, and a node whose
	// only peer is the bucket started (no cluster node lists it).
	FaultS3Stop     Kind = "s3-stop"
	FaultS3Start    Kind = "s3-start"
	FaultBucketNode Kind = "bucket-node"
)

// faultStarts are the kinds that count as an injected fault (ends and
// restarts are not counted again).
var faultStarts = []Kind{FaultKill, FaultStop, FaultPartition, FaultIsolate, FaultCut,
	FaultLatency, FaultBandwidth, FaultCorrupt, FaultFillDisk, FaultAddNode,
	FaultLongPartition, FaultLongIsolate, FaultLongStop, FaultLongKill, FaultSkewFar, FaultSkew, FaultFlip, FaultMetaDamage, FaultLeave,
	FaultS3Stop, FaultBucketNode}

// longKinds are the long outages, in the order the rounds take them.
var longKinds = []Kind{FaultLongIsolate, FaultLongPartition, FaultLongStop, FaultLongKill}

// Config configures a soak. Zero fields take the defaults of Defaults.
type Config struct {
	// Seed determines the whole schedule (Plan) and every file's bytes.
	Seed uint64
	// Nodes is the number of nodes started (one more joins if AddNode).
	Nodes int
	// Duration is the total time of chaos, split into rounds of Round;
	// after each round everything is healed and the invariants checked.
	Duration time.Duration
	// Round is the chaos time of one round.
	Round time.Duration
	// Workers is the number of concurrent clients.
	Workers int
	// MaxSize is the largest file (file 1 has exactly this size).
	MaxSize int64
	// BigPercent is the share of uploads of 4 MiB and more, in percent
	// (a fifth of them 16 MiB and more).
	BigPercent float64
	// ByteBudget bounds the bytes each worker uploads as new files: once
	// past its share, a worker uploads only files under 256 KiB.
	ByteBudget int64
	// Pause is the mean think time of a worker between operations.
	Pause time.Duration
	// FaultGap is the mean time between the starts of two fault episodes.
	FaultGap time.Duration
	// MaxFault bounds a fault episode's length.
	MaxFault time.Duration
	// NoFullDisk leaves out the full disk (by default one node is put
	// onto a small tmpfs for part of one round).
	NoFullDisk bool
	// NoAddNode leaves out the join (by default a new replica joins in
	// the middle of one round).
	NoAddNode bool
	// NoMetaDamage leaves out the damaged metadata (by default, before
	// every round but the first, a replica's meta.db is damaged while it
	// is stopped and the runbook followed).
	NoMetaDamage bool
	// NoLeave leaves out the leave and rejoin of a member (by default one
	// replica leaves the cluster and is added again in one round).
	NoLeave bool
	// Archive lists a bucket of a versitygw server (an S3 server started
	// by the soak) in every node's peer list as an archive peer, with a
	// short archive_interval, and plans its faults: the S3 server
	// stopped for a while in every round, and a node whose only peer is
	// the bucket started in one round (archive.go). Off by default, so
	// that a seed's schedule without it is unchanged.
	Archive bool
	// Converge bounds the wait for convergence after each round.
	Converge time.Duration
	// Caches is the number of cache nodes (the last of the Nodes), each
	// with a store of CacheMaxBytes (--max-bytes); the workers use them
	// like any node. Negative: none.
	Caches        int
	CacheMaxBytes int64
	// Retention and Expiry are every node's --tombstone-retention and
	// --tombstone-expiry. Every round has outages planned longer than
	// Retention; some are longer than Expiry.
	Retention, Expiry time.Duration
	// MaxClockOffset is every node's --max-clock-offset. Every round
	// skews a node's clock, beyond it or within it.
	MaxClockOffset time.Duration
	// ScrubInterval and ScrubRate are every node's --scrub-interval and
	// --scrub-rate: the bit flips of each round must be found and
	// repaired before the round's check.
	ScrubInterval time.Duration
	ScrubRate     int64
	// NoListSelf and NoListTwice leave out the identity traps: by
	// default every node's peer list names the node itself under a
	// second URL (cluster.Options.ListSelf) and every peer twice, under
	// two proxies of the same link (ListTwice, SecondProxy).
	NoListSelf, NoListTwice bool
	// KeepGoing runs every round even after one found violations (by
	// default the soak stops after the first such round).
	KeepGoing bool
	// Sabotage lists self-tests (SabotageKinds) applied before the first
	// check, each of which the checks must report; the soak then fails.
	Sabotage []string
}

// SabotageKinds are the self-tests of Config.Sabotage: what each does
// behind the soak's back just before the first round's check.
var SabotageKinds = []string{
	"lost",    // remove an acknowledged blob file from a replica
	"undone",  // put a deleted file's bytes back into a replica's blobs/
	"flip",    // flip a byte of a present blob on a replica (no time to scrub)
	"delete",  // delete a present ID through the API, unrecorded
	"unblock", // lift a blocked ID through the API, unrecorded
	"block",   // block a lifted (or present) ID through the API, unrecorded
	"archive", // with Archive: a newer tombstone record of a present ID in the bucket
}

// Defaults returns the configuration of a run: short (about two minutes
// of wall time on two cores) or long.
func Defaults(short bool) Config {
	if short {
		return Config{
			Nodes: 5, Duration: 70 * time.Second, Round: 35 * time.Second, Workers: 4,
			MaxSize: 64 << 20, BigPercent: 1.5, ByteBudget: 300 << 20,
			Pause: 60 * time.Millisecond, FaultGap: 1500 * time.Millisecond, MaxFault: 6 * time.Second,
			Converge: 90 * time.Second,
			Caches:   1, CacheMaxBytes: 4 << 20,
			Retention: 5 * time.Second, Expiry: 15 * time.Second, MaxClockOffset: 3 * time.Second,
			ScrubInterval: 3 * time.Second, ScrubRate: 32 << 20,
		}
	}
	return Config{
		Nodes: 5, Duration: 30 * time.Minute, Round: 3 * time.Minute, Workers: 4,
		MaxSize: 64 << 20, BigPercent: 3, ByteBudget: 4 << 30,
		Pause: 120 * time.Millisecond, FaultGap: 3 * time.Second, MaxFault: 15 * time.Second,
		Converge: 3 * time.Minute,
		Caches:   2, CacheMaxBytes: 16 << 20,
		Retention: 10 * time.Second, Expiry: 40 * time.Second, MaxClockOffset: 3 * time.Second,
		ScrubInterval: 10 * time.Second, ScrubRate: 32 << 20,
	}
}

// withDefaults fills the zero fields of c from d.
func (c Config) withDefaults(d Config) Config {
	c.Nodes = cmp.Or(c.Nodes, d.Nodes)
	c.Duration = cmp.Or(c.Duration, d.Duration)
	c.Round = min(cmp.Or(c.Round, d.Round), c.Duration)
	c.Workers = cmp.Or(c.Workers, d.Workers)
	c.MaxSize = cmp.Or(c.MaxSize, d.MaxSize)
	c.BigPercent = cmp.Or(c.BigPercent, d.BigPercent)
	c.ByteBudget = cmp.Or(c.ByteBudget, d.ByteBudget)
	c.Pause = cmp.Or(c.Pause, d.Pause)
	c.FaultGap = cmp.Or(c.FaultGap, d.FaultGap)
	c.MaxFault = cmp.Or(c.MaxFault, d.MaxFault)
	c.Converge = cmp.Or(c.Converge, d.Converge)
	c.Caches = cmp.Or(c.Caches, d.Caches)
	if c.Caches < 0 {
		c.Caches = 0
	}
	c.Caches = min(c.Caches, c.Nodes-1) // at least one replica
	c.CacheMaxBytes = cmp.Or(c.CacheMaxBytes, d.CacheMaxBytes)
	c.Retention = cmp.Or(c.Retention, d.Retention)
	c.Expiry = cmp.Or(c.Expiry, d.Expiry)
	c.MaxClockOffset = cmp.Or(c.MaxClockOffset, d.MaxClockOffset)
	c.ScrubInterval = cmp.Or(c.ScrubInterval, d.ScrubInterval)
	c.ScrubRate = cmp.Or(c.ScrubRate, d.ScrubRate)
	return c
}

// Cache reports whether node i is a cache (the joined node is a replica).
func (c Config) Cache(i int) bool { return i < c.Nodes && i >= c.Nodes-c.Caches }

// Tier reports whether node i is a tier: with Archive, the last
// replica (when there are two or more) runs with --max-bytes
// TierMaxBytes, keeping only the recently read blobs' bytes and reading
// the rest back from the archive. It stays a replica in every check but
// those of its disk: reads after convergence may fetch, and an eviction
// is not a loss.
func (c Config) Tier(i int) bool {
	return c.Archive && c.Replicas() >= 2 && i == c.Replicas()-1
}

// TierMaxBytes is the tier's --max-bytes (see Config.Tier).
const TierMaxBytes = 8 << 20

// Replicas is the number of replicas started.
func (c Config) Replicas() int { return c.Nodes - c.Caches }

// Rounds is the number of rounds of chaos.
func (c Config) Rounds() int {
	n := int((c.Duration + c.Round - 1) / c.Round)
	return max(n, 1)
}

// MaxNodes is the number of nodes the cluster ends with.
func (c Config) MaxNodes() int {
	if !c.NoAddNode {
		return c.Nodes + 1
	}
	return c.Nodes
}

// Event is one step of the schedule or of what happened: a fault (from
// the Plan, applied by the test goroutine) or a client operation (from a
// worker's Stream).
type Event struct {
	Round int
	// At is the planned offset of a fault from the start of its round.
	At   time.Duration
	Kind Kind
	// Node is the target node; Peer the other end of a link (-1: none).
	Node, Peer int
	// Episode links a fault's start and end events.
	Episode int
	// Latency is the delay of a latency episode.
	Latency time.Duration
	// Rate is the limit of a bandwidth episode, in KB/s.
	Rate int64
	// Margin is the free space a full disk gets, in bytes.
	Margin int64
	// Offset is a skew's clock offset.
	Offset time.Duration
	// Pick chooses the blob file a bit flip hits (among those present
	// when it strikes); Small prefers files served from memory.
	Pick  uint64
	Small bool
	// Dur is a long outage's or a skew's planned length (for the log).
	Dur time.Duration
}

func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "round %d +%v %s", e.Round, e.At.Round(time.Millisecond), e.Kind)
	if e.Node >= 0 {
		fmt.Fprintf(&b, " node %d", e.Node)
	}
	if e.Peer >= 0 {
		switch e.Kind {
		case FaultPartition, FaultLongPartition:
			fmt.Fprintf(&b, " <-> node %d", e.Peer)
		default:
			fmt.Fprintf(&b, " -> node %d", e.Peer)
		}
	}
	switch {
	case e.Latency > 0:
		fmt.Fprintf(&b, " %v", e.Latency)
	case e.Rate > 0:
		fmt.Fprintf(&b, " %d KB/s", e.Rate)
	case e.Margin > 0:
		fmt.Fprintf(&b, " (%d KiB free)", e.Margin>>10)
	case e.Offset != 0:
		fmt.Fprintf(&b, " clock %+v", e.Offset)
	case e.Kind == FaultFlip && e.Small:
		b.WriteString(" (a small file)")
	case e.Kind == FaultFlip:
		b.WriteString(" (a larger file)")
	}
	if e.Dur > 0 {
		fmt.Fprintf(&b, " for %v", e.Dur.Round(100*time.Millisecond))
	}
	if e.Episode > 0 {
		fmt.Fprintf(&b, " [episode %d]", e.Episode)
	}
	return b.String()
}

// Plan is the fault schedule of a soak: a function of the Config (seed
// included) alone.
type Plan struct {
	Config
	// Faults are every round's fault events, ordered by At.
	Faults [][]Event
	// FullDiskNode is the node that gets a full disk, or -1.
	FullDiskNode int
}

// interval is a span of a round during which a node is down, or a link
// carries a toxic.
type interval struct{ from, to time.Duration }

func (a interval) overlaps(b interval) bool { return a.from < b.to && b.from < a.to }

// NewPlan draws the fault schedule of cfg. The streams of random numbers:
// PCG(seed, 1000+round) for the faults of a round, PCG(seed, 999) for the
// one-off events, PCG(seed, 10+w) for worker w, PCG(seed, 1<<32+f) for
// file f's size.
//
// It is long on purpose, for now: each stream's draws must stay in exactly
// this order, or a seed no longer replays the schedule it named (a soak
// run reports its seed so that a failure can be replayed). A split into
// steps must keep every draw, in order, and is checked by replaying seeds
// before and after.
func NewPlan(cfg Config, short bool) *Plan {
	cfg = cfg.withDefaults(Defaults(short))
	p := &Plan{Config: cfg, FullDiskNode: -1}
	rounds := cfg.Rounds()
	p.Faults = make([][]Event, rounds)
	one := rand.New(rand.NewPCG(cfg.Seed, 999))
	episode := 0
	next := func() int { episode++; return episode }

	// The one-off events, first: the random episodes keep clear of them.
	fdRound, addRound := 0, rounds-1
	if rounds > 2 {
		fdRound, addRound = 1, rounds/2
	}
	var fill, free time.Duration
	if !cfg.NoFullDisk {
		fill = cfg.Round * time.Duration(20+one.IntN(10)) / 100
		free = cfg.Round * time.Duration(65+one.IntN(10)) / 100
		p.FullDiskNode = one.IntN(cfg.Nodes)
		ep := next()
		margin := int64(1+one.IntN(6)) << 20
		p.Faults[fdRound] = append(p.Faults[fdRound],
			Event{Round: fdRound, At: fill, Kind: FaultFillDisk, Node: p.FullDiskNode, Peer: -1, Episode: ep, Margin: margin},
			Event{Round: fdRound, At: free, Kind: FaultFreeDisk, Node: p.FullDiskNode, Peer: -1, Episode: ep})
	}
	addAt := time.Duration(-1)
	if !cfg.NoAddNode {
		addAt = cfg.Round * time.Duration(35+one.IntN(20)) / 100
		p.Faults[addRound] = append(p.Faults[addRound],
			Event{Round: addRound, At: addAt, Kind: FaultAddNode, Node: cfg.Nodes, Peer: -1})
	}

	maxDown := max((cfg.Nodes-1)/2, 1)
	for r := range rounds {
		rng := rand.New(rand.NewPCG(cfg.Seed, 1000+uint64(r)))
		var down []struct {
			node int
			interval
		}
		slow := map[[2]int][]interval{} // latency and bandwidth per link
		nodesAt := func(t time.Duration) int {
			if !cfg.NoAddNode && (r > addRound || (r == addRound && t > addAt+time.Second)) {
				return cfg.Nodes + 1
			}
			return cfg.Nodes
		}
		// A node that is down cannot be put onto or off a tmpfs: keep
		// kills of the full-disk node away from those two moments.
		diskBusy := func(node int, iv interval) bool {
			if r != fdRound || node != p.FullDiskNode {
				return false
			}
			for _, at := range []time.Duration{fill, free} {
				if iv.overlaps(interval{at - time.Second, at + time.Second}) {
					return true
				}
			}
			// AddNode needs the nodes' peer lists rewritten, not the
			// nodes up; nothing to avoid there.
			return false
		}
		// Nodes that must stay up for a while: the skewed one, so that
		// its probes run.
		var reserved []struct {
			node int
			interval
		}
		canDown := func(node int, iv interval) bool {
			if diskBusy(node, iv) {
				return false
			}
			for _, x := range reserved {
				if x.node == node && x.overlaps(iv) {
					return false
				}
			}
			n := 0
			for _, d := range down {
				if d.overlaps(iv) {
					if d.node == node {
						return false
					}
					n++
				}
			}
			return n < maxDown
		}
		markDown := func(node int, iv interval) {
			down = append(down, struct {
				node int
				interval
			}{node, iv})
		}
		reserve := func(node int, iv interval) {
			reserved = append(reserved, struct {
				node int
				interval
			}{node, iv})
		}
		end := cfg.Round - 500*time.Millisecond

		// The round's planned episodes first (their own stream, so the
		// random ones below stay as they were): long outages, a skew,
		// bit flips.
		p.Faults[r] = append(p.Faults[r], p.specials(r, end, next, canDown, markDown, reserve)...)

		gap := func() time.Duration {
			return time.Duration(float64(cfg.FaultGap) * (0.3 + 1.4*rng.Float64()))
		}
		for at := gap(); at < end-time.Second; at += gap() {
			d := time.Second + time.Duration(rng.Int64N(int64(cfg.MaxFault-time.Second)+1))
			iv := interval{at, min(at+d, end)}
			n := nodesAt(at)
			a := rng.IntN(n)
			b := (a + 1 + rng.IntN(n-1)) % n
			kind := pick(rng, []weighted{
				{FaultKill, 14}, {FaultStop, 5}, {FaultPartition, 12}, {FaultIsolate, 5}, {FaultCut, 8},
				{FaultLatency, 12}, {FaultBandwidth, 4}, {FaultCorrupt, 14},
			})
			ep := next()
			start := Event{Round: r, At: iv.from, Kind: kind, Node: a, Peer: -1, Episode: ep}
			stop := Event{Round: r, At: iv.to, Node: a, Peer: -1, Episode: ep}
			switch kind {
			case FaultKill, FaultStop:
				// A restart soon or a longer outage.
				if rng.IntN(2) == 0 {
					iv.to = min(iv.from+300*time.Millisecond+time.Duration(rng.Int64N(int64(time.Second))), end)
					stop.At = iv.to
				}
				if !canDown(a, iv) {
					continue
				}
				markDown(a, iv)
				stop.Kind = FaultRestart
			case FaultIsolate:
				stop.Kind = FaultUncut
			case FaultPartition, FaultCut:
				start.Peer, stop.Peer = b, b
				stop.Kind = FaultUncut
			case FaultCorrupt:
				start.Peer, stop.Peer = b, b
				stop.Kind = FaultClean
			case FaultLatency, FaultBandwidth:
				link := [2]int{a, b}
				busy := false
				for _, s := range slow[link] {
					busy = busy || s.overlaps(iv)
				}
				if busy {
					continue
				}
				slow[link] = append(slow[link], iv)
				start.Peer, stop.Peer = b, b
				stop.Kind = FaultUnslow
				if kind == FaultLatency {
					start.Latency = time.Duration(20+rng.IntN(780)) * time.Millisecond
				} else {
					start.Rate = int64(200 + rng.IntN(3800))
				}
			}
			p.Faults[r] = append(p.Faults[r], start, stop)
		}
		sort.SliceStable(p.Faults[r], func(i, j int) bool { return p.Faults[r][i].At < p.Faults[r][j].At })
	}
	p.planLeave(fdRound, next)
	p.planArchive(next)
	return p
}

// planArchive adds (with Archive) the faults of the archive peer, from a
// stream of its own, PCG(seed, 996), drawn after every other (the other
// streams, and so the schedule of a seed without Archive, are unchanged):
// in every round the S3 server is stopped for 3 to 12 seconds (ending
// within the round), and in one round, at 20 to 60 percent of it, the
// bucket-only node is started.
func (p *Plan) planArchive(next func() int) {
	cfg := p.Config
	if !cfg.Archive {
		return
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 996))
	rounds := cfg.Rounds()
	end := cfg.Round - 500*time.Millisecond
	for r := range rounds {
		d := 3*time.Second + time.Duration(rng.Int64N(int64(9*time.Second)))
		from := cfg.Round*15/100 + time.Duration(rng.Int64N(int64(cfg.Round*35/100)+1))
		if from+d > end {
			d = end - from
		}
		if d > 0 {
			ep := next()
			p.Faults[r] = append(p.Faults[r],
				Event{Round: r, At: from, Kind: FaultS3Stop, Node: -1, Peer: -1, Episode: ep, Dur: d},
				Event{Round: r, At: from + d, Kind: FaultS3Start, Node: -1, Peer: -1, Episode: ep})
		}
	}
	r := rng.IntN(rounds)
	at := cfg.Round*20/100 + time.Duration(rng.Int64N(int64(cfg.Round*40/100)+1))
	p.Faults[r] = append(p.Faults[r], Event{Round: r, At: at, Kind: FaultBucketNode, Node: -1, Peer: -1})
	for r := range rounds {
		sort.SliceStable(p.Faults[r], func(i, j int) bool { return p.Faults[r][i].At < p.Faults[r][j].At })
	}
}

// planLeave adds (unless NoLeave) the leave and rejoin of a replica to the last round (the
// first of a run of one or two rounds), from a stream of its own,
// PCG(seed, 997), drawn after every other: the other streams' draws, and
// so the schedules the seeds named before it, are unchanged.
func (p *Plan) planLeave(fdRound int, next func() int) {
	cfg := p.Config
	if cfg.NoLeave || cfg.Replicas() < 3 {
		return
	}
	rounds := cfg.Rounds()
	round := 0
	if rounds > 2 {
		round = rounds - 1
	}
	var nodes []int
	for i := range cfg.Replicas() {
		if round != fdRound || i != p.FullDiskNode {
			nodes = append(nodes, i)
		}
	}
	lv := rand.New(rand.NewPCG(cfg.Seed, 997))
	node := nodes[lv.IntN(len(nodes))]
	leave := cfg.Round * time.Duration(15+lv.IntN(15)) / 100
	// Back well within the expiry: a node removed longer than that must
	// join again as a new one (the heal does that if the rejoin finds it
	// down).
	rejoin := leave + cfg.Expiry/3
	ep := next()
	p.Faults[round] = append(p.Faults[round],
		Event{Round: round, At: leave, Kind: FaultLeave, Node: node, Peer: -1, Episode: ep},
		Event{Round: round, At: rejoin, Kind: FaultRejoin, Node: node, Peer: -1, Episode: ep})
	sort.SliceStable(p.Faults[round], func(i, j int) bool { return p.Faults[round][i].At < p.Faults[round][j].At })
}

// specials plans round r's episodes of the new kinds, from their own
// stream PCG(seed, 2000+round):
//
//   - two long outages (longKinds in turn: an isolation, of a cache when
//     there is one, and a partition in one round; a stop and a kill in
//     the next), longer than the retention; every stop longer than the
//     expiry too;
//   - one skew of a replica's clock, beyond max_clock_offset in even
//     rounds, within it in odd ones; the skew and its after-effect (the
//     node's clock stays ahead by the offset once put back) end within
//     the round;
//   - two bit flips (a small file, then a larger one), on a replica in
//     even rounds, the first on a cache in odd ones.
//
// Every episode stays on the nodes started (not the joined one). Long
// stops and kills are registered with markDown, if canDown allows. The
// skewed node is one no long outage of the round takes while it is
// skewed, and it is reserved: no kill or stop takes it down then.
//
// It is long for the reason NewPlan is: its draws from PCG(seed,
// 2000+round) must stay in this order for a seed to replay.
func (p *Plan) specials(r int, end time.Duration, next func() int,
	canDown func(int, interval) bool, markDown func(int, interval), reserve func(int, interval)) []Event {
	cfg := p.Config
	rng := rand.New(rand.NewPCG(cfg.Seed, 2000+uint64(r)))
	var out []Event
	replicas := cfg.Replicas()
	var outages []struct {
		nodes []int
		interval
	}
	between := func(lo, hi time.Duration) time.Duration {
		if hi <= lo {
			return lo
		}
		return lo + time.Duration(rng.Int64N(int64(hi-lo)))
	}
	for k := range 2 {
		kind := longKinds[(2*r+k)%len(longKinds)]
		d := between(cfg.Retention+2*time.Second, cfg.Expiry+5*time.Second)
		if kind == FaultLongStop {
			d = between(cfg.Expiry+2*time.Second, cfg.Expiry+5*time.Second)
		}
		from := between(cfg.Round*8/100, cfg.Round*25/100)
		if from+d > end-time.Second {
			d = end - time.Second - from
		}
		if d <= cfg.Retention {
			continue // a round too short for it
		}
		iv := interval{from, from + d}
		ep := next()
		a := rng.IntN(replicas)
		start := Event{Round: r, At: iv.from, Kind: kind, Node: a, Peer: -1, Episode: ep, Dur: d}
		stop := Event{Round: r, At: iv.to, Kind: FaultUncut, Node: a, Peer: -1, Episode: ep}
		switch kind {
		case FaultLongIsolate:
			if cfg.Caches > 0 && (r < 2 || rng.IntN(2) == 0) {
				// A cache cut off from every replica while the
				// workers upload to it: what it took must wait.
				a = replicas + rng.IntN(cfg.Caches)
			}
		case FaultLongPartition:
			if replicas < 2 {
				continue
			}
			b := (a + 1 + rng.IntN(replicas-1)) % replicas
			start.Peer, stop.Peer = b, b
		case FaultLongStop, FaultLongKill:
			ok := false
			for i := range replicas {
				if canDown((a+i)%replicas, iv) {
					a, ok = (a+i)%replicas, true
					break
				}
			}
			if !ok {
				continue
			}
			markDown(a, iv)
			stop.Kind = FaultRestart
		}
		start.Node, stop.Node = a, a
		out = append(out, start, stop)
		nodes := []int{a}
		if start.Peer >= 0 {
			nodes = append(nodes, start.Peer)
		}
		outages = append(outages, struct {
			nodes []int
			interval
		}{nodes, iv})
	}

	// The skew: its window (the skew, then as long again as its offset,
	// and a second) ends within the round.
	far := r%2 == 0
	off := cfg.MaxClockOffset * time.Duration(2+rng.IntN(3))
	kind := FaultSkewFar
	if !far {
		kind = FaultSkew
		off = cfg.MaxClockOffset/4 + time.Duration(rng.Int64N(int64(cfg.MaxClockOffset/4)+1))
		if rng.IntN(2) == 0 {
			off = -off
		}
	}
	d := between(3*time.Second, max(6*time.Second, cfg.Round/20))
	from := between(cfg.Round*25/100, cfg.Round*45/100)
	if tail := from + d + off.Abs() + time.Second; tail > end {
		from -= tail - end
	}
	if from > 0 {
		ep := next()
		iv := interval{from - time.Second, from + d + time.Second}
		a := rng.IntN(replicas)
		for i := range replicas {
			free := true
			for _, o := range outages {
				free = free && !(slices.Contains(o.nodes, (a+i)%replicas) && o.overlaps(iv))
			}
			if free {
				a = (a + i) % replicas
				break
			}
		}
		reserve(a, iv)
		out = append(out,
			Event{Round: r, At: from, Kind: kind, Node: a, Peer: -1, Episode: ep, Offset: off, Dur: d},
			Event{Round: r, At: from + d, Kind: FaultUnskew, Node: a, Peer: -1, Episode: ep})
	}

	for k := range 2 {
		a := rng.IntN(replicas)
		if k == 0 && r%2 == 1 && cfg.Caches > 0 {
			a = replicas + rng.IntN(cfg.Caches)
		}
		out = append(out, Event{Round: r, At: between(cfg.Round*35/100, cfg.Round*85/100), Kind: FaultFlip,
			Node: a, Peer: -1, Pick: rng.Uint64(), Small: k == 0})
	}
	return out
}

type weighted struct {
	kind   Kind
	weight int
}

func pick(rng *rand.Rand, ws []weighted) Kind {
	total := 0
	for _, w := range ws {
		total += w.weight
	}
	n := rng.IntN(total)
	for _, w := range ws {
		if n < w.weight {
			return w.kind
		}
		n -= w.weight
	}
	return ws[len(ws)-1].kind
}

// FileSize is the size of file f of the plan: a function of the seed and
// f alone, so any worker can read any file. File 0 is empty and file 1
// has MaxSize bytes; the others are mostly small.
func (p *Plan) FileSize(f int) int64 {
	switch f {
	case 0:
		return 0
	case 1:
		return p.MaxSize
	}
	rng := rand.New(rand.NewPCG(p.Seed, 1<<32+uint64(f)))
	logUniform := func(lo, hi int64) int64 {
		if hi <= lo {
			return lo
		}
		x := math.Exp(math.Log(float64(lo)) + rng.Float64()*(math.Log(float64(hi))-math.Log(float64(lo))))
		return min(max(int64(x), lo), hi)
	}
	var size int64
	big := p.BigPercent
	switch x := rng.Float64() * 100; {
	case x < 3:
		size = rng.Int64N(65) // around the corruptor's 64-byte threshold
	case x < 48:
		size = logUniform(65, 16<<10) // served from memory
	case x < 80:
		size = logUniform(16<<10, 256<<10)
	case x < 100-big:
		size = logUniform(256<<10, 4<<20)
	case x < 100-big/5:
		size = logUniform(4<<20, 16<<20)
	default:
		size = logUniform(16<<20, p.MaxSize)
	}
	return fitSize(f, min(size, p.MaxSize))
}

// File returns file f's content.
func (p *Plan) File(f int) Content { return Content{Seed: p.Seed, Index: f, Size: p.FileSize(f)} }

// Upload variants: how an upload is sent.
const (
	PutName = "put-name" // PUT /<name>
	PutID   = "put-id"   // PUT /<id>: the body must hash to it
	Post    = "post"     // POST / with X-Filename
)

// Op is one client operation of a worker's stream.
type Op struct {
	Worker int
	Seq    int // in the worker's stream
	Kind   Kind
	File   Content
	// Node is the node to send it to, as a number to take modulo the
	// nodes at the time; Stubborn sends it there even if the node is
	// down (the others go to the next running node).
	Node     int
	Stubborn bool
	// For uploads: the variant, a body without Content-Length
	// (chunked), X-Content-SHA512, ?replicas=N (0: none).
	Variant  string
	Chunked  bool
	SHA      bool
	Replicas int
	// For reads: a Range (RangeLen > 0), ?nopeerload=1.
	RangeOff, RangeLen int64
	NoPeer             bool
	// Pause is the think time after the operation.
	Pause time.Duration
}

// Stream is the deterministic sequence of one worker's operations. The
// worker owns the files w, w+W, w+2W, ... (W workers): no other worker
// uploads or deletes them, so the order of the operations on an ID is
// the worker's. Any worker reads any file.
type Stream struct {
	p       *Plan
	w       int
	rng     *rand.Rand
	seq     int
	files   []int        // own files uploaded (planned) so far
	live    map[int]bool // own files whose last planned operation is an upload
	blocked map[int]bool // own files blocked (planned) and not lifted since
	lifted  []int        // own files lifted (planned) and not uploaded since
	created int          // own files drawn
	budget  int64        // bytes of new files left
	next    *Op          // a read planned right after a write
}

// Stream returns worker w's operations.
func (p *Plan) Stream(w int) *Stream {
	return &Stream{p: p, w: w, rng: rand.New(rand.NewPCG(p.Seed, 10+uint64(w))),
		live: map[int]bool{}, blocked: map[int]bool{}, budget: p.ByteBudget / int64(p.Workers)}
}

// Next returns the worker's next operation.
func (s *Stream) Next() Op {
	if op := s.next; op != nil {
		s.next = nil
		return *op
	}
	op := s.draw()
	// Often, read what was just written through another node: before
	// replication has brought it there, so it is fetched from a peer,
	// over links that may be corrupting, cut or slow.
	if op.Kind != OpRead && s.rng.IntN(10) < 4 {
		r := Op{Worker: s.w, Seq: s.seq, Kind: OpRead, File: op.File,
			Node: op.Node + 1 + s.rng.IntN(s.p.MaxNodes()-1), Pause: op.Pause}
		s.seq++
		if r.File.Size > 0 && s.rng.IntN(5) == 0 {
			r.RangeOff = s.rng.Int64N(r.File.Size)
			r.RangeLen = 1 + s.rng.Int64N(min(r.File.Size-r.RangeOff, 1<<20))
		}
		op.Pause = 0
		s.next = &r
	}
	return op
}

// draw draws the next operation.
func (s *Stream) draw() Op {
	rng := s.rng
	op := Op{Worker: s.w, Seq: s.seq, Node: rng.IntN(s.p.MaxNodes()), Stubborn: rng.IntN(10) == 0}
	s.seq++
	// At least a few milliseconds between two writes of one ID (see the
	// package doc on clocks).
	op.Pause = 5*time.Millisecond + time.Duration(float64(s.p.Pause)*2*rng.Float64())
	kind := OpUpload
	if len(s.files) > 0 {
		kind = pick(rng, []weighted{{OpUpload, 28}, {OpReupload, 12}, {OpDelete, 15}, {OpRead, 40}, {OpBlock, 3}, {OpLift, 2}})
	}
	switch kind {
	case OpUpload:
		f := s.w + s.created*s.p.Workers
		s.created++
		c := s.p.File(f)
		if c.Size > 256<<10 && c.Size > s.budget && f != 1 {
			// Over budget: this file is never uploaded; read instead.
			return s.read(op)
		}
		s.budget -= c.Size
		s.files = append(s.files, f)
		s.live[f] = true
		op.File = c
		s.uploadVariant(&op)
	case OpReupload:
		// Half the time a file lifted since its block, if any (it must
		// be accepted and kept); else mostly a file deleted before (it
		// must come back), else one still held (answered 200).
		var f int
		if n := len(s.lifted); n > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(n)
			f = s.lifted[i]
			s.lifted = append(s.lifted[:i], s.lifted[i+1:]...)
		} else if f = s.choose(false, rng.IntN(10) < 7); s.blocked[f] {
			return s.read(op) // an upload of a blocked file is refused
		}
		s.live[f] = true
		op.File = s.p.File(f)
		s.uploadVariant(&op)
	case OpDelete:
		f := s.choose(true, rng.IntN(10) < 9)
		if s.blocked[f] {
			return s.read(op)
		}
		s.live[f] = false
		op.File = s.p.File(f)
	case OpBlock:
		f := s.choose(true, rng.IntN(10) < 8)
		if s.blocked[f] {
			return s.read(op)
		}
		s.live[f] = false
		s.blocked[f] = true
		s.lifted = slices.DeleteFunc(s.lifted, func(g int) bool { return g == f })
		op.File = s.p.File(f)
	case OpLift:
		var bl []int
		for _, f := range s.files {
			if s.blocked[f] {
				bl = append(bl, f)
			}
		}
		if len(bl) == 0 {
			return s.read(op)
		}
		f := bl[rng.IntN(len(bl))]
		delete(s.blocked, f)
		s.lifted = append(s.lifted, f)
		op.File = s.p.File(f)
	case OpRead:
		return s.read(op)
	}
	op.Kind = kind
	return op
}

// choose picks one of the worker's files, preferably one whose planned
// liveness is want.
func (s *Stream) choose(want, prefer bool) int {
	if prefer {
		var c []int
		for _, f := range s.files {
			if s.live[f] == want {
				c = append(c, f)
			}
		}
		if len(c) > 0 {
			return c[s.rng.IntN(len(c))]
		}
	}
	return s.files[s.rng.IntN(len(s.files))]
}

func (s *Stream) uploadVariant(op *Op) {
	rng := s.rng
	op.Variant = []string{PutName, PutName, PutID, Post}[rng.IntN(4)]
	op.Chunked = rng.IntN(4) == 0
	op.SHA = op.Variant != PutID && rng.IntN(4) == 0
	if rng.IntN(10) == 0 {
		op.Replicas = 2 + rng.IntN(2)
	}
}

// read makes op a read: mostly of the worker's own files, else of any
// file drawn so far by any worker (perhaps not uploaded yet).
func (s *Stream) read(op Op) Op {
	rng := s.rng
	op.Kind = OpRead
	var f int
	if len(s.files) > 0 && rng.IntN(10) < 7 {
		f = s.files[rng.IntN(len(s.files))]
	} else {
		f = rng.IntN(max(s.created, 1) * s.p.Workers)
	}
	op.File = s.p.File(f)
	if op.File.Size > 0 && rng.IntN(6) == 0 {
		op.RangeOff = rng.Int64N(op.File.Size)
		op.RangeLen = 1 + rng.Int64N(min(op.File.Size-op.RangeOff, 1<<20))
	}
	op.NoPeer = rng.IntN(12) == 0
	return op
}
