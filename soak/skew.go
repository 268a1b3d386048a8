package soak

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// A skew of node N's clock by offset Δ lasts from FaultSkew (or
// FaultSkewFar) to FaultUnskew; N's hybrid logical clock then stays ahead
// by up to Δ for Δ more (it never goes back), and nodes that accepted
// N's states follow it. While the clocks may disagree, two writes of one
// ID sent to two nodes could be ordered against the worker's order (the
// package doc on clocks), so for the whole skew window, the skew and Δ
// and a second after it, each worker sends its writes through one home
// node (never N), whose clock orders them, and blocks and lifts (which
// every node applies with a delete of its own clock) are left out.
//
// N itself gets writes only from the fault goroutine's probes, on files
// of their own: an upload before the skew, then, with the clock moved,
// an upload and the delete of the first. Their states must end on every
// replica like any acknowledged write. With a skew beyond
// max_clock_offset, no other node may take the probe's state while it is
// that far ahead of its own clock (Consistency 10): for a second and a
// half after the probe, every other node's state of it is looked at.

// skewWindow is the skew window in force.
type skewWindow struct {
	node   int
	offset time.Duration
	// until is the window's end (UnixNano); 0 while the skew lasts.
	until atomic.Int64
}

// home is worker's node during the window among n nodes: never the
// skewed one.
func (w *skewWindow) home(worker, n int) int {
	return (w.node + 1 + worker%(n-1)) % n
}

// activeWindow returns the skew window in force now, or nil.
func (r *Runner) activeWindow() *skewWindow {
	w := r.window.Load()
	if w == nil {
		return nil
	}
	if u := w.until.Load(); u != 0 && time.Now().UnixNano() >= u {
		return nil
	}
	return w
}

// probeBase is the index of the first probe file: far beyond the
// workers' files, so no worker writes or reads it.
const probeBase = 1 << 30

// probeFile returns a new probe file.
func (r *Runner) probeFile() Content {
	k := r.probes.Add(1)
	return Content{Seed: r.plan.Seed, Index: probeBase + int(k), Size: 512 + (k*977)%7000}
}

// probed is the outcome of a probe's write.
type probed struct {
	file  Content
	id    string
	out   Outcome
	stamp *Stamp
}

// probeWrite uploads (or deletes) a probe file through node, recording it
// in the ledger (worker -1) and the log (actor "probe").
func (r *Runner) probeWrite(round, node int, url string, kind Kind, f Content, why string) probed {
	id := r.ids.Of(f)
	line := Line{Round: round, Actor: "probe", Kind: kind, Node: node, Peer: -1, File: f.Index, ID: id, Size: f.Size}
	begin := time.Now()
	line.T = r.log.Since(begin)
	ctx := context.Background()
	var out Outcome
	var res string
	if kind == OpDelete {
		out, res = r.delete(ctx, url, id)
	} else {
		out, res = r.upload(ctx, url, id, Op{Worker: -1, Kind: OpUpload, File: f, Variant: PutName}, &line)
	}
	line.Detail = why + " " + line.Detail
	p := probed{file: f, id: id, out: out}
	if out == Acked {
		if st, err := r.readState(ctx, node, url, id); err == nil && st.Code == 200 {
			p.stamp = &st.Stamp
			res += fmt.Sprintf(" [%s, %+v from now]", r.showStamp(st.Stamp), clockTime(st.Stamp.Clock).Sub(time.Now()).Round(10*time.Millisecond))
		}
	}
	line.Dur, line.Result = time.Since(begin), res
	seq := r.log.Add(line)
	r.ledger.Record(id, f, -1, Write{Kind: kind, Outcome: out, Seq: seq, Stamp: p.stamp})
	r.report.countOp("probe", string(kind)+" "+out.String())
	return p
}

// skew applies a FaultSkew or FaultSkewFar (test goroutine).
func (r *Runner) skew(ev Event, line *Line) {
	n := r.c.Nodes[ev.Node]
	w := &skewWindow{node: ev.Node, offset: ev.Offset}
	r.window.Store(w)
	var before probed
	running := n.Running()
	if running {
		before = r.probeWrite(ev.Round, ev.Node, n.URL, OpUpload, r.probeFile(), "before the skew:")
	}
	n.SetClock(ev.Offset)
	r.skewed[ev.Node] = ev.Offset
	line.Result = fmt.Sprintf("node %d's clock %+v (max_clock_offset %v); the workers write through one node each until %v after the skew",
		ev.Node, ev.Offset, r.plan.MaxClockOffset, ev.Offset.Abs()+time.Second)
	if !running {
		line.Result += "; no probes: the node is down"
		return
	}
	var others []skewPeer
	r.mu.RLock()
	for i, u := range r.urls {
		if i != ev.Node && !r.cache[i] {
			others = append(others, skewPeer{i, u})
		}
	}
	r.mu.RUnlock()
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		r.probeSkew(ev, n.URL, before, others)
	}()
}

// skewPeer is a replica other than the skewed node.
type skewPeer struct {
	node int
	url  string
}

// probeSkew probes the node skewed by ev (at url) until a probe shows
// its new clock, deletes the probe written before the skew, and, for a
// far skew, checks the other replicas.
func (r *Runner) probeSkew(ev Event, url string, before probed, others []skewPeer) {
	far := ev.Kind == FaultSkewFar
	// The node reads its clock file within about 20 ms: probe until
	// a probe's state shows the new clock (only a clock moved ahead
	// shows it for sure).
	var ahead probed
	for try := range 10 {
		p := r.probeWrite(ev.Round, ev.Node, url, OpUpload, r.probeFile(), fmt.Sprintf("with the clock %+v (try %d):", ev.Offset, try+1))
		if p.out != Acked || p.stamp == nil {
			break
		}
		if !far || clockTime(p.stamp.Clock).After(time.Now().Add(ev.Offset-time.Second)) {
			ahead = p
			break
		}
	}
	if before.out == Acked {
		r.probeWrite(ev.Round, ev.Node, url, OpDelete, before.file, fmt.Sprintf("with the clock %+v:", ev.Offset))
	}
	if !far || ahead.stamp == nil {
		return
	}
	r.checkFarState(ev, ahead, others)
}

// checkFarState checks for 1.5 s that no other replica takes the state
// of ahead, written with a clock far ahead: a violation otherwise.
func (r *Runner) checkFarState(ev Event, ahead probed, others []skewPeer) {
	flagged := map[int]bool{}
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		for _, o := range others {
			if flagged[o.node] {
				continue
			}
			st, err := r.readState(context.Background(), o.node, o.url, ahead.id)
			if err != nil || st.Code != 200 {
				continue
			}
			if lead := clockTime(st.Stamp.Clock).Sub(time.Now()); lead > r.plan.MaxClockOffset+500*time.Millisecond {
				flagged[o.node] = true
				seq := r.log.Add(Line{T: r.log.Since(time.Now()), Round: ev.Round, Actor: "probe", Kind: "clock-check", Node: o.node, Peer: ev.Node,
					File: ahead.file.Index, ID: ahead.id, Size: ahead.file.Size,
					Result: fmt.Sprintf("VIOLATION: holds %s, %v ahead of its clock", r.showStamp(st.Stamp), lead.Round(10*time.Millisecond))})
				r.report.Violate(Violation{Invariant: 0, Kind: VClockAccepted, Node: o.node, ID: ahead.id,
					Detail: fmt.Sprintf("probe file %d uploaded to node %d with its clock %+v: node %d holds its state %v ahead of its own clock (max_clock_offset %v), event %d",
						ahead.file.Index, ev.Node, ev.Offset, o.node, lead.Round(10*time.Millisecond), r.plan.MaxClockOffset, seq)})
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.log.Add(Line{T: r.log.Since(time.Now()), Round: ev.Round, Actor: "probe", Kind: "clock-check", Node: -1, Peer: ev.Node,
		File: ahead.file.Index, ID: ahead.id, Size: ahead.file.Size,
		Result: fmt.Sprintf("%d of %d other replicas took the state while it was beyond max_clock_offset", len(flagged), len(others))})
}

// unskew puts a skewed node's clock back (test goroutine): the skew
// window ends its offset and a second later.
func (r *Runner) unskew(ev Event, line *Line) {
	r.c.Nodes[ev.Node].SetClock(0)
	delete(r.skewed, ev.Node)
	if w := r.window.Load(); w != nil && w.node == ev.Node {
		tail := w.offset.Abs() + time.Second
		w.until.Store(time.Now().Add(tail).UnixNano())
		line.Result = fmt.Sprintf("node %d's clock back; the skew window ends in %v", ev.Node, tail)
	}
}
