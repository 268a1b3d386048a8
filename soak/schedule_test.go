package soak

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPlanIsAFunctionOfTheSeed(t *testing.T) {
	for _, short := range []bool{true, false} {
		a := NewPlan(Config{Seed: 42}, short)
		b := NewPlan(Config{Seed: 42}, short)
		c := NewPlan(Config{Seed: 43}, short)
		require.True(t, reflect.DeepEqual(a.Faults, b.Faults), "same seed, same faults")
		assert.False(t, reflect.DeepEqual(a.Faults, c.Faults), "another seed, other faults")
		sa, sb := a.Stream(2), b.Stream(2)
		for range 500 {
			require.Equal(t, sa.Next(), sb.Next())
		}
	}
}

func TestPlanKeepsItsConstraints(t *testing.T) {
	for seed := range uint64(30) {
		for _, short := range []bool{true, false} {
			p := NewPlan(Config{Seed: seed}, short)
			require.Len(t, p.Faults, p.Rounds())
			maxDown := (p.Nodes - 1) / 2
			fills, adds := 0, 0
			kinds := map[Kind]int{}
			for r, evs := range p.Faults {
				open := map[int]Event{}
				down := map[int]bool{}
				long := map[int]Event{}
				var skew Event
				skewing := -1
				for i, ev := range evs {
					assert.Equal(t, r, ev.Round)
					assert.Less(t, ev.At, p.Round, "every event within its round")
					if i > 0 {
						assert.LessOrEqual(t, evs[i-1].At, ev.At, "ordered by time")
					}
					switch ev.Kind {
					case FaultAddNode:
						adds++
						continue
					case FaultFlip:
						kinds[ev.Kind]++
						assert.Less(t, ev.Node, p.Nodes, "a flip on a node started")
						continue
					case FaultLongKill, FaultLongStop:
						kinds[ev.Kind]++
						assert.NotEqual(t, skewing, ev.Node, "seed %d: the skewed node goes down", seed)
						assert.False(t, down[ev.Node], "seed %d: node %d down twice", seed, ev.Node)
						assert.False(t, p.Cache(ev.Node), "long outages of caches are isolations")
						down[ev.Node] = true
						assert.LessOrEqual(t, len(down), maxDown, "seed %d round %d: too many nodes down at %v", seed, r, ev.At)
						long[ev.Episode] = ev
					case FaultLongPartition, FaultLongIsolate:
						kinds[ev.Kind]++
						long[ev.Episode] = ev
					case FaultSkew, FaultSkewFar:
						kinds[ev.Kind]++
						assert.False(t, down[ev.Node], "seed %d: skew of node %d, which is down", seed, ev.Node)
						skewing = ev.Node
						assert.False(t, p.Cache(ev.Node), "skews are of replicas")
						if ev.Kind == FaultSkewFar {
							assert.Greater(t, ev.Offset, p.MaxClockOffset)
						} else {
							assert.Less(t, ev.Offset.Abs(), p.MaxClockOffset)
						}
						skew = ev
					case FaultUnskew:
						skewing = -1
						// The window (the skew, then its offset and a
						// second more) closes within the round.
						assert.Less(t, ev.At+skew.Offset.Abs()+time.Second, p.Round, "seed %d round %d: skew window", seed, r)
					case FaultUncut:
						if s, ok := long[ev.Episode]; ok {
							assert.Greater(t, ev.At-s.At, p.Retention, "seed %d: %v longer than the retention", seed, s)
						}
					case FaultFillDisk:
						fills++
						assert.False(t, down[ev.Node], "seed %d: fill-disk of a node that is down", seed)
					case FaultFreeDisk:
						assert.False(t, down[ev.Node], "seed %d: free-disk of a node that is down", seed)
					case FaultKill, FaultStop:
						assert.False(t, down[ev.Node], "seed %d: node %d killed twice", seed, ev.Node)
						assert.NotEqual(t, skewing, ev.Node, "seed %d: the skewed node goes down", seed)
						down[ev.Node] = true
						assert.LessOrEqual(t, len(down), maxDown, "seed %d round %d: too many nodes down at %v", seed, r, ev.At)
					case FaultRestart:
						delete(down, ev.Node)
						if s, ok := long[ev.Episode]; ok {
							assert.Greater(t, ev.At-s.At, p.Retention, "seed %d: %v longer than the retention", seed, s)
							if s.Kind == FaultLongStop {
								assert.Greater(t, ev.At-s.At, p.Expiry, "seed %d: %v longer than the expiry", seed, s)
							}
						}
					}
					if s, ok := open[ev.Episode]; ok {
						assert.Equal(t, s.Node, ev.Node)
						delete(open, ev.Episode)
					} else {
						open[ev.Episode] = ev
					}
				}
				assert.Empty(t, open, "seed %d round %d: every episode ends in its round", seed, r)
			}
			assert.Equal(t, 1, fills)
			assert.Equal(t, 1, adds)
			// The first round cuts a cache off from every replica for
			// longer than the retention, while the workers upload to it.
			cacheCut := false
			for _, ev := range p.Faults[0] {
				cacheCut = cacheCut || ev.Kind == FaultLongIsolate && p.Cache(ev.Node)
			}
			assert.True(t, cacheCut, "seed %d: no long isolation of a cache in round 0", seed)
			// Every new kind at least once, the short run included.
			for _, k := range []Kind{FaultLongPartition, FaultLongIsolate, FaultLongStop, FaultLongKill, FaultSkewFar, FaultSkew, FaultFlip} {
				assert.Positive(t, kinds[k], "seed %d (short %v): no %s", seed, short, k)
			}
		}
	}
}

func TestFilesAreDistinct(t *testing.T) {
	p := NewPlan(Config{Seed: 7, MaxSize: 64 << 10}, true)
	assert.EqualValues(t, 0, p.FileSize(0))
	assert.EqualValues(t, 64<<10, p.FileSize(1))
	ids := NewIDs(7)
	seen := map[string]int{}
	tiny := 0
	for f := range 2000 {
		c := p.File(f)
		require.LessOrEqual(t, c.Size, p.MaxSize)
		if f > 0 {
			require.Positive(t, c.Size)
		}
		if c.Size < 8 {
			tiny++
		}
		id := ids.Of(c)
		if g, ok := seen[id]; ok {
			t.Fatalf("files %d and %d have the same bytes", g, f)
		}
		seen[id] = f
	}
	assert.Positive(t, tiny, "some files below 8 bytes")
}

func TestContentReads(t *testing.T) {
	c := Content{Seed: 3, Index: 12345, Size: 3*blockSize + 17}
	all, err := io.ReadAll(c.Reader())
	require.NoError(t, err)
	require.Len(t, all, int(c.Size))
	sum := sha512.Sum512(all)
	assert.Equal(t, hex.EncodeToString(sum[:]), c.computeID())
	for _, r := range [][2]int64{{0, 1}, {5, 100}, {blockSize - 3, 10}, {2*blockSize + 1, blockSize + 16}, {c.Size - 1, 1}} {
		assert.True(t, bytes.Equal(all[r[0]:r[0]+r[1]], c.Slice(r[0], r[1])), "slice %v", r)
	}
	other := Content{Seed: 4, Index: 12345, Size: c.Size}
	assert.NotEqual(t, c.computeID(), other.computeID(), "the seed matters")
}

func TestStreamsKeepToTheirFiles(t *testing.T) {
	p := NewPlan(Config{Seed: 9, Workers: 3}, true)
	for w := range 3 {
		s := p.Stream(w)
		kinds := map[Kind]int{}
		sinceWrite := time.Hour
		for range 2000 {
			op := s.Next()
			kinds[op.Kind]++
			if op.Kind != OpRead {
				require.GreaterOrEqual(t, sinceWrite, 5*time.Millisecond, "pauses between two writes")
				sinceWrite = 0
			}
			sinceWrite += op.Pause
			if op.Kind != OpRead {
				require.Equal(t, w, op.File.Index%3, "worker %d writes file %d", w, op.File.Index)
			}
		}
		for _, k := range []Kind{OpUpload, OpReupload, OpDelete, OpRead, OpBlock, OpLift} {
			assert.Positive(t, kinds[k], "worker %d: %s", w, k)
		}
	}
}

// TestStreamsBlockLiftReupload checks that a worker blocks its files,
// lifts blocks, and uploads lifted files again, never uploading a file it
// has blocked and not lifted.
func TestStreamsBlockLiftReupload(t *testing.T) {
	p := NewPlan(Config{Seed: 11}, true)
	s := p.Stream(1)
	blocked := map[int]bool{}
	lifted := map[int]bool{}
	again := 0
	for range 5000 {
		op := s.Next()
		f := op.File.Index
		switch op.Kind {
		case OpBlock:
			blocked[f] = true
		case OpLift:
			require.True(t, blocked[f], "lift of file %d, not blocked", f)
			delete(blocked, f)
			lifted[f] = true
		case OpUpload, OpReupload:
			require.False(t, blocked[f], "upload of file %d, blocked", f)
			if lifted[f] {
				again++
			}
			delete(lifted, f)
		}
	}
	assert.Positive(t, again, "lifted files uploaded again")
}

func TestEntryWant(t *testing.T) {
	up := func(o Outcome) Write { return Write{Kind: OpUpload, Outcome: o} }
	del := func(o Outcome) Write { return Write{Kind: OpDelete, Outcome: o} }
	for _, tc := range []struct {
		name   string
		writes []Write
		want   Want
	}{
		{"never written", nil, Absent},
		{"upload refused", []Write{up(Refused)}, Absent},
		{"upload acked", []Write{up(Acked)}, Present},
		{"upload maybe", []Write{up(Maybe)}, Unknown},
		{"deleted", []Write{up(Acked), del(Acked)}, Absent},
		{"delete refused", []Write{up(Acked), del(Refused)}, Present},
		{"delete maybe", []Write{up(Acked), del(Maybe)}, Unknown},
		{"maybe, then acked", []Write{up(Acked), del(Maybe), up(Acked)}, Present},
		{"re-uploaded", []Write{up(Acked), del(Acked), up(Acked)}, Present},
		{"re-upload maybe", []Write{up(Acked), del(Acked), up(Maybe)}, Unknown},
		{"re-upload maybe, refused after", []Write{up(Acked), del(Acked), up(Maybe), del(Refused)}, Unknown},
		{"resolved", []Write{up(Acked), del(Maybe), {Kind: OpDelete, Outcome: Acked, Resolved: true}}, Absent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := Entry{Writes: tc.writes}
			got, _ := e.Want()
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestCheck(t *testing.T) {
	a := Content{Seed: 1, Index: 1, Size: 100}
	b := Content{Seed: 1, Index: 2, Size: 200}
	ida, idb := a.computeID(), b.computeID()
	held := func(ids ...string) map[string]FileView {
		m := map[string]FileView{}
		for _, id := range ids {
			size := a.Size
			if id == idb {
				size = b.Size
			}
			m[id] = FileView{Size: size, Sum: id}
		}
		return m
	}
	view := func(i int, files map[string]FileView) NodeView {
		return NodeView{Index: i, Files: files, StatusBlobs: int64(len(files)), Queues: map[string]int64{"x": 0}}
	}
	entries := func(wa, wb []Write) map[string]Entry {
		return map[string]Entry{ida: {ID: ida, File: a, Writes: wa}, idb: {ID: idb, File: b, Writes: wb}}
	}
	acked := []Write{{Outcome: Acked, Seq: 1}}
	deleted := []Write{{Outcome: Acked, Seq: 1}, {Kind: OpDelete, Outcome: Acked, Seq: 2}}
	maybe := []Write{{Outcome: Maybe, Seq: 1}}
	kinds := func(vs []Violation) []string {
		var k []string
		for _, v := range vs {
			k = append(k, v.Kind)
		}
		return k
	}

	t.Run("all well", func(t *testing.T) {
		vs := Check([]NodeView{view(0, held(ida)), view(1, held(ida))}, entries(acked, deleted))
		assert.Empty(t, vs)
	})
	t.Run("lost and undone", func(t *testing.T) {
		vs := Check([]NodeView{view(0, held(ida, idb)), view(1, held())}, entries(acked, deleted))
		assert.ElementsMatch(t, []string{VUndoneDelete, VLostUpload}, kinds(vs))
	})
	t.Run("unknown must agree", func(t *testing.T) {
		assert.Empty(t, Check([]NodeView{view(0, held(idb)), view(1, held(idb))}, entries(nil, maybe)))
		assert.Empty(t, Check([]NodeView{view(0, held()), view(1, held())}, entries(nil, maybe)))
		vs := Check([]NodeView{view(0, held(idb)), view(1, held())}, entries(nil, maybe))
		assert.Equal(t, []string{VDiffer}, kinds(vs))
	})
	t.Run("wrong bytes, temp, queue, status", func(t *testing.T) {
		bad := view(0, map[string]FileView{ida: {Size: a.Size, Sum: idb}})
		bad.Temp = []string{"upload-123"}
		bad.Strays = []string{"blobs/ab/x.tmp"}
		bad.Queues["y"] = 3
		bad.StatusBlobs = 5
		vs := Check([]NodeView{bad}, entries(acked, nil))
		assert.ElementsMatch(t, []string{VWrongOnDisk, VTemp, VStray, VQueue, VStatus}, kinds(vs))
	})
	t.Run("files nobody uploaded", func(t *testing.T) {
		vs := Check([]NodeView{view(0, held(ida, idb))}, entries(acked, []Write{{Outcome: Refused}}))
		assert.Equal(t, []string{VRefusedStored}, kinds(vs))
		vs = Check([]NodeView{view(0, held(ida))}, map[string]Entry{})
		assert.Equal(t, []string{VUnknownFile}, kinds(vs))
	})
}

// TestPlanArchive: Archive adds, from its own stream, an S3 outage ending
// within every round and one start of the bucket-only node, and leaves
// every other event of the seed as it was.
func TestPlanArchive(t *testing.T) {
	for seed := range uint64(30) {
		for _, short := range []bool{true, false} {
			plain := NewPlan(Config{Seed: seed}, short)
			p := NewPlan(Config{Seed: seed, Archive: true}, short)
			require.Len(t, p.Faults, plain.Rounds())
			bucketNodes := 0
			for r, evs := range p.Faults {
				var others []Event
				var stop *Event
				outages := 0
				for _, ev := range evs {
					switch ev.Kind {
					case FaultS3Stop:
						stop = &ev
						outages++
						assert.Positive(t, ev.Dur)
					case FaultS3Start:
						require.NotNil(t, stop, "seed %d round %d: a start before a stop", seed, r)
						assert.Equal(t, stop.Episode, ev.Episode)
						assert.Greater(t, ev.At, stop.At)
						assert.Less(t, ev.At, p.Round, "the outage ends within its round")
						stop = nil
					case FaultBucketNode:
						bucketNodes++
					default:
						others = append(others, ev)
					}
				}
				assert.Nil(t, stop, "seed %d round %d: the S3 server stays stopped", seed, r)
				assert.Equal(t, 1, outages, "seed %d round %d", seed, r)
				assert.Equal(t, plain.Faults[r], others, "seed %d round %d: the other events changed", seed, r)
			}
			assert.Equal(t, 1, bucketNodes, "seed %d", seed)
		}
	}
}
