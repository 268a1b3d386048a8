package peer_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// waitHeld blocks until n holds id, woken by n's change feed.
func waitHeld(b testing.TB, n *node, id dtfc.ID, deadline time.Time) {
	for {
		ch := n.Store.Changed()
		if n.holds(id) {
			return
		}
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			b.Fatalf("%s never got %s", n.URL, id)
		}
	}
}

// BenchmarkReplicationLatency measures, for uploads to one node of three,
// the time from the upload's answer to the file being held by both other
// replicas (loopback, real disks). Reports p50 and p99.
func BenchmarkReplicationLatency(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		b.Run(strconv.Itoa(size>>10)+"KiB", func(b *testing.B) {
			nodes := startCluster(b, running(nodeOpts{}), running(nodeOpts{}), running(nodeOpts{}))
			a := nodes[0]
			data := randomBytes(b, size)
			var lat []time.Duration
			b.SetBytes(int64(size))
			i := 0
			for b.Loop() {
				i++
				copy(data, fmt.Sprintf("%016d", i)) // a new blob each time
				req, _ := http.NewRequest(http.MethodPut, a.URL+"/f", bytes.NewReader(data))
				resp, err := http.DefaultClient.Do(req)
				require.NoError(b, err)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				answered := time.Now()
				id := dtfc.Sum(data)
				for _, n := range nodes[1:] {
					waitHeld(b, n, id, answered.Add(30*time.Second))
				}
				lat = append(lat, time.Since(answered))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkCatchUp measures how fast a replica that missed 10,000 uploads
// of 1 KiB catches up once it returns (DTFC_CATCHUP_FILES and
// DTFC_CATCHUP_SIZE change the count and size). It reports too how many
// blobs the returning node's anti-entropy pulled (ae-pulls): each is one
// the pushes were bringing as well. DTFC_CATCHUP_CPUPROFILE names a file
// for a CPU profile of the catch-up alone, without the uploads before it
// (not with -cpuprofile).
func BenchmarkCatchUp(b *testing.B) {
	files, size := 10000, 1<<10
	if v := os.Getenv("DTFC_CATCHUP_FILES"); v != "" {
		files, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("DTFC_CATCHUP_SIZE"); v != "" {
		size, _ = strconv.Atoi(v)
	}
	for b.Loop() {
		b.StopTimer()
		nodes := startCluster(b, running(nodeOpts{}), running(nodeOpts{}))
		a, c := nodes[0], nodes[1]
		c.down()
		var wg sync.WaitGroup
		var next atomic.Int64
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1); i <= int64(files); i = next.Add(1) {
					d := randomBytes(b, size)
					a.put(d)
				}
			}()
		}
		wg.Wait()
		stopProfile := catchUpProfile(b)
		b.StartTimer()
		start := time.Now()
		c.start()
		for {
			blobs, _ := c.Store.Stats()
			if blobs == int64(files) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		el := time.Since(start)
		stopProfile()
		b.ReportMetric(float64(files)/el.Seconds(), "files/s")
		b.ReportMetric(float64(files*size)/el.Seconds()/1e6, "MB/s")
		b.ReportMetric(c.metric("dtfc_antientropy_repairs_total", "upload"), "ae-pulls")
	}
}

// catchUpProfile starts a CPU profile into the file DTFC_CATCHUP_CPUPROFILE
// names, if it is set, and returns what stops it.
func catchUpProfile(b *testing.B) func() {
	name := os.Getenv("DTFC_CATCHUP_CPUPROFILE")
	if name == "" {
		return func() {}
	}
	f, err := os.Create(name)
	require.NoError(b, err)
	require.NoError(b, pprof.StartCPUProfile(f))
	return func() {
		pprof.StopCPUProfile()
		require.NoError(b, f.Close())
	}
}

// countingTransport counts the bytes of requests and answers.
type countingTransport struct {
	rt  http.RoundTripper
	out atomic.Int64
	in  atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ContentLength > 0 {
		c.out.Add(r.ContentLength)
	}
	c.out.Add(int64(len(r.URL.RequestURI()) + 100)) // request line and headers, roughly
	resp, err := c.rt.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.in}
		c.in.Add(200) // status line and headers, roughly
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}

// aeIDs is the number of IDs per node of the anti-entropy benchmarks:
// DTFC_AE_IDS, default 100,000 (the README's figures use 10^4 to 10^6;
// setting up a million IDs takes a minute or two).
func aeIDs() int {
	if v, err := strconv.Atoi(os.Getenv("DTFC_AE_IDS")); err == nil && v > 0 {
		return v
	}
	return 100_000
}

// aeNodes starts two nodes holding the same ids states, and counts the
// bytes the first one's anti-entropy exchanges. Only the first has a
// peer: what the other is given reaches it by anti-entropy alone, not by
// a push. The states are tombstones, which need no bytes (the digests
// cover them like uploads); base is the clock they are given from (ID i
// gets base+i).
func aeNodes(b *testing.B, ids int) (a, other *node, ct *countingTransport, base dtfc.Timestamp) {
	ct = &countingTransport{rt: http.DefaultTransport}
	withCounter := func(p *peer.Options) { p.HTTPClient = &http.Client{Transport: ct} }
	a, other = newNode(b, nodeOpts{peer: withCounter}), newNode(b, nodeOpts{})
	a.writePeers(other)
	other.writePeers()
	a.start()
	other.start()
	base = dtfc.TimestampAt(time.Now().Add(-time.Hour))
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(ids); i = next.Add(1) {
				st := dtfc.State{ID: aeID(i), Deleted: true, Clock: base + dtfc.Timestamp(i), Node: "bench"}
				for _, n := range []*node{a, other} {
					if _, err := n.Store.Apply(st); err != nil {
						b.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	return a, other, ct, base
}

func aeID(i int64) dtfc.ID { return dtfc.Sum([]byte(strconv.FormatInt(i, 10))) }

// BenchmarkAntiEntropyInSync measures one anti-entropy round between two
// nodes holding the same states: bytes exchanged and time.
func BenchmarkAntiEntropyInSync(b *testing.B) {
	ids := aeIDs()
	a, _, ct, _ := aeNodes(b, ids)
	ctx := context.Background()
	for b.Loop() {
		ct.in.Store(0)
		ct.out.Store(0)
		if n := a.Cluster.AntiEntropy(ctx); n != 1 {
			b.Fatalf("round completed with %d peers", n)
		}
	}
	b.ReportMetric(float64(ct.in.Load()+ct.out.Load()), "bytes/round")
	b.ReportMetric(float64(ids), "ids")
}

// BenchmarkAntiEntropyOnePercent measures a round that repairs 1% of the
// IDs: before each, the other node gets a newer state of every
// hundredth ID (spread over the whole ID space), which the round pulls.
func BenchmarkAntiEntropyOnePercent(b *testing.B) {
	ids := aeIDs()
	a, other, ct, base := aeNodes(b, ids)
	ctx := context.Background()
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		for i := int64(round % 100); i <= int64(ids); i += 100 {
			st := dtfc.State{ID: aeID(i), Deleted: true, Clock: base + dtfc.Timestamp(int64(round+1)*int64(ids)+i), Node: "other"}
			if _, err := other.Store.Apply(st); err != nil {
				b.Fatal(err)
			}
		}
		ct.in.Store(0)
		ct.out.Store(0)
		b.StartTimer()
		if n := a.Cluster.AntiEntropy(ctx); n != 1 {
			b.Fatalf("round completed with %d peers", n)
		}
	}
	b.StopTimer()
	ours, err := a.Store.Digests()
	require.NoError(b, err)
	theirs, err := other.Store.Digests()
	require.NoError(b, err)
	require.Equal(b, theirs, ours, "the round repaired every difference")
	b.ReportMetric(float64(ct.in.Load()+ct.out.Load()), "bytes/round")
	b.ReportMetric(float64(ids), "ids")
}
