package soak

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/api"
)

func TestEntryModel(t *testing.T) {
	w := func(k Kind, o Outcome) Write { return Write{Kind: k, Outcome: o} }
	up, del, block, lift := OpUpload, OpDelete, OpBlock, OpLift
	for _, tc := range []struct {
		name   string
		writes []Write
		state  Want
		deny   DenyWant
	}{
		{"blocked", []Write{w(up, Acked), w(block, Acked)}, Absent, Blocked},
		{"block maybe of a present file", []Write{w(up, Acked), w(block, Maybe)}, Unknown, DenyUnknown},
		{"block maybe of a deleted file", []Write{w(up, Acked), w(del, Acked), w(block, Maybe)}, Absent, DenyUnknown},
		{"block refused", []Write{w(up, Acked), w(block, Refused)}, Present, NotBlocked},
		{"lifted", []Write{w(up, Acked), w(block, Acked), w(lift, Acked)}, Absent, Lifted},
		{"lifted, uploaded again", []Write{w(up, Acked), w(block, Acked), w(lift, Acked), w(up, Acked)}, Present, Lifted},
		{"lift refused (not blocked there yet)", []Write{w(up, Acked), w(block, Acked), w(lift, Refused)}, Absent, Blocked},
		{"lift maybe", []Write{w(up, Acked), w(block, Acked), w(lift, Maybe)}, Absent, DenyUnknown},
		{"lift maybe of an unblocked file", []Write{w(up, Acked), w(lift, Maybe)}, Present, NotBlocked},
		{"upload acknowledged while blocked", []Write{w(up, Acked), w(block, Acked), w(up, Acked)}, Unknown, Blocked},
		{"upload refused while blocked", []Write{w(up, Acked), w(block, Acked), w(up, Refused)}, Absent, Blocked},
		{"delete maybe of an absent file", []Write{w(up, Acked), w(del, Acked), w(del, Maybe)}, Absent, NotBlocked},
		{"resolved blocked", []Write{w(up, Acked), w(block, Maybe), {Kind: block, Outcome: Acked, Resolved: true}}, Unknown, Blocked},
		{"resolved lifted, then present", []Write{w(block, Maybe), {Kind: lift, Resolved: true}, {Kind: up, Resolved: true}}, Present, Lifted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := Entry{Writes: tc.writes}
			m := e.Model()
			assert.Equal(t, tc.state, m.State, "state")
			assert.Equal(t, tc.deny, m.Deny, "deny")
			if m.State == Present || m.State == Absent && m.Decider != nil {
				assert.True(t, m.Decider.Outcome == Acked)
			}
		})
	}
}

func TestCheckCaches(t *testing.T) {
	a := Content{Seed: 1, Index: 1, Size: 100}
	b := Content{Seed: 1, Index: 2, Size: 200}
	ida, idb := a.computeID(), b.computeID()
	entries := map[string]Entry{
		ida: {ID: ida, File: a, Writes: []Write{{Kind: OpUpload, Outcome: Acked, Seq: 1}}},
		idb: {ID: idb, File: b, Writes: []Write{{Kind: OpUpload, Outcome: Acked, Seq: 2}, {Kind: OpBlock, Outcome: Acked, Seq: 3}}},
	}
	view := func(i int, cache bool, files map[string]FileView) NodeView {
		return NodeView{Index: i, Cache: cache, Files: files, StatusBlobs: int64(len(files)), Queues: map[string]int64{}}
	}
	fa := map[string]FileView{ida: {Size: a.Size, Sum: ida}}
	t.Run("a cache need not hold anything", func(t *testing.T) {
		assert.Empty(t, Check([]NodeView{view(0, false, fa), view(1, true, map[string]FileView{})}, entries))
	})
	t.Run("a replica must", func(t *testing.T) {
		vs := Check([]NodeView{view(0, false, fa), view(1, false, map[string]FileView{})}, entries)
		assert.Equal(t, []string{VLostUpload}, kinds(vs))
	})
	t.Run("a cache holding a blocked file", func(t *testing.T) {
		vs := Check([]NodeView{view(0, false, fa), view(1, true, map[string]FileView{idb: {Size: b.Size, Sum: idb}})}, entries)
		assert.Equal(t, []string{VBlockedStored}, kinds(vs))
	})
	t.Run("a node still resyncing", func(t *testing.T) {
		v := view(0, false, fa)
		v.Resyncing = true
		assert.Equal(t, []string{VResyncing}, kinds(Check([]NodeView{v}, entries)))
	})
}

func kinds(vs []Violation) []string {
	var k []string
	for _, v := range vs {
		k = append(k, v.Kind)
	}
	return k
}

func TestCheckStates(t *testing.T) {
	f := Content{Seed: 1, Index: 7, Size: 10}
	id := f.computeID()
	up := Stamp{Clock: 100 << 16, Node: "aaaa"}
	del := Stamp{Deleted: true, Clock: 200 << 16, Node: "bbbb"}
	older := Stamp{Clock: 50 << 16, Node: "aaaa"}
	live := func(s Stamp) NodeState { return NodeState{Code: 200, Stamp: s, Held: !s.Deleted} }
	none := NodeState{Code: 404}
	names := func(n string) string { return n }
	entry := func(ws ...Write) map[string]Entry { return map[string]Entry{id: {ID: id, File: f, Writes: ws}} }
	uploaded := entry(Write{Kind: OpUpload, Outcome: Acked, Seq: 1, Stamp: &up})
	deleted := entry(Write{Kind: OpUpload, Outcome: Acked, Seq: 1, Stamp: &up}, Write{Kind: OpDelete, Outcome: Acked, Seq: 2, Stamp: &del})
	maybe := entry(Write{Kind: OpUpload, Outcome: Maybe, Seq: 1})
	never := entry(Write{Kind: OpUpload, Outcome: Refused, Seq: 1})
	check := func(es map[string]Entry, cache []bool, ss ...NodeState) []string {
		return kinds(CheckStates(map[string][]NodeState{id: ss}, cache, es, names))
	}
	two := []bool{false, false}
	for _, tc := range []struct {
		name    string
		entries map[string]Entry
		cache   []bool
		states  []NodeState
		want    []string
	}{
		{"present everywhere", uploaded, two, []NodeState{live(up), live(up)}, nil},
		{"present, a cache without it", uploaded, []bool{false, true}, []NodeState{live(up), none}, nil},
		{"upload's state lost", uploaded, two, []NodeState{live(up), none}, []string{VStateLost}},
		{"upload's state deleted", uploaded, two, []NodeState{live(up), live(del)}, []string{VStateLost, VStateDiffer}},
		{"not held", uploaded, two, []NodeState{live(up), {Code: 200, Stamp: up}}, []string{VStateLost}},
		{"older than acknowledged", uploaded, two, []NodeState{live(older), live(older)}, []string{VStateOlder, VStateOlder}},
		{"deleted everywhere", deleted, two, []NodeState{live(del), live(del)}, nil},
		{"tombstone forgotten on one", deleted, two, []NodeState{live(del), none}, nil},
		{"delete undone", deleted, two, []NodeState{live(del), live(up)}, []string{VStateUndone, VStateDiffer}},
		{"never acknowledged, live", never, two, []NodeState{none, live(up)}, []string{VStateUnexplained}},
		{"unknown, agreeing", maybe, two, []NodeState{live(up), live(up)}, nil},
		{"unknown, split", maybe, two, []NodeState{live(up), none}, []string{VStateDiffer}},
		{"resyncing", uploaded, two, []NodeState{live(up), {Code: 503, Err: "resyncing"}}, []string{VStateUnreadable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.ElementsMatch(t, tc.want, check(tc.entries, tc.cache, tc.states...))
		})
	}
}

func TestCheckDeny(t *testing.T) {
	f := Content{Seed: 1, Index: 8, Size: 10}
	id := f.computeID()
	entry := func(ws ...Write) map[string]Entry { return map[string]Entry{id: {ID: id, File: f, Writes: ws}} }
	blocked := entry(Write{Kind: OpUpload, Outcome: Acked, Seq: 1}, Write{Kind: OpBlock, Outcome: Acked, Seq: 2})
	lifted := entry(Write{Kind: OpBlock, Outcome: Acked, Seq: 1}, Write{Kind: OpLift, Outcome: Acked, Seq: 2})
	unknown := entry(Write{Kind: OpBlock, Outcome: Maybe, Seq: 1})
	listed := func(i int, cache, on bool) DenyView {
		v := DenyView{Index: i, Cache: cache, Entries: map[string]int{}}
		if on {
			v.Entries[id] = BlockStatus
		}
		return v
	}
	for _, tc := range []struct {
		name    string
		entries map[string]Entry
		lists   []DenyView
		want    []string
	}{
		{"blocked everywhere", blocked, []DenyView{listed(0, false, true), listed(1, true, true)}, nil},
		{"blocked, a cache without it", blocked, []DenyView{listed(0, false, true), listed(1, true, false)}, []string{VBlockMissing}},
		{"lifted everywhere", lifted, []DenyView{listed(0, false, false), listed(1, false, false)}, nil},
		{"lifted block back", lifted, []DenyView{listed(0, false, true), listed(1, false, false)}, []string{VLiftedBack}},
		{"unknown, agreeing", unknown, []DenyView{listed(0, false, true), listed(1, false, true)}, nil},
		{"unknown, split", unknown, []DenyView{listed(0, false, true), listed(1, false, false)}, []string{VDenyDiffer}},
		{"a block nobody made", map[string]Entry{}, []DenyView{listed(0, false, true)}, []string{VBlockUnknown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.ElementsMatch(t, tc.want, kinds(CheckDeny(tc.lists, tc.entries)))
		})
	}
}

func TestResyncingStatus(t *testing.T) {
	rs, _ := resyncing(&api.Status{Cluster: &api.Cluster{Resyncing: true}})
	assert.True(t, rs)
	rs, info := resyncing(&api.Status{Cluster: &api.Cluster{Resync: api.ResyncStatus{State: api.ResyncRetrying, LastError: "x"}}})
	assert.True(t, rs)
	assert.Contains(t, info, "retrying")
	rs, _ = resyncing(&api.Status{Cluster: &api.Cluster{Resync: api.ResyncStatus{State: api.ResyncInSync}}})
	assert.False(t, rs)
	rs, _ = resyncing(&api.Status{})
	assert.False(t, rs)
}

func TestLogTotals(t *testing.T) {
	l := NewLog(time.Now())
	l.Add(Line{Actor: "fault", Kind: FaultSkewFar})
	l.Add(Line{Actor: "fault", Kind: FaultUnskew})
	l.Add(Line{Actor: "fault", Kind: FaultFlip, Result: "skipped: no blob file of that size to flip"})
	l.Add(Line{Actor: "fault", Kind: FaultFlip, Result: "byte 3 flipped"})
	l.Add(Line{Actor: "fault", Kind: FaultLongStop})
	l.Add(Line{Actor: "worker 2", Kind: OpBlock})
	tot := l.Totals()
	assert.Equal(t, map[Kind]int{FaultSkewFar: 1, FaultFlip: 1, FaultLongStop: 1}, tot["fault"])
	assert.Equal(t, map[Kind]int{OpBlock: 1}, tot["worker"])
	var b strings.Builder
	require.NoError(t, l.WriteTotals(&b))
	assert.Contains(t, b.String(), "# fault: 3 (bit-flip 1, long-stop 1, skew-far 1)")
}
