package e2e_test

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// BenchmarkMissSources measures a miss of a large blob from three holders
// behind links throttled to the same rate, taken in pieces from all three
// (node 4, the default) against from one at a time (node 3,
// --peer-fetch-sources 1), in the same cluster, a new blob each round,
// the two caches' order alternating. It reports each one's rate against
// the links' and their ratio (issue 14 asks for >= 2.5).
//
//	go test -run XXX -bench MissSources -benchtime 3x ./e2e/
func BenchmarkMissSources(b *testing.B) {
	const size = 48 << 20
	const rate = 12_000 // kB/s per link
	c := cluster.Start(b, cluster.Options{Nodes: 5,
		Roles:    []dtfc.Role{dtfc.RoleReplica, dtfc.RoleReplica, dtfc.RoleReplica, dtfc.RoleCache, dtfc.RoleCache},
		NodeArgs: map[int][]string{3: {"--peer-fetch-sources", "1"}}})
	hc := &http.Client{}
	for _, cache := range []int{3, 4} {
		for j := range 3 {
			c.Throttle(cache, j, rate)
		}
	}
	var took [2]time.Duration // one source, pieces
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		data := randomBytes(size)
		status, id, err := tryUpload(b.Context(), hc, c.Nodes[0].URL, "large.bin", data)
		if err != nil || status != http.StatusCreated {
			b.Fatalf("upload: %d, %v", status, err)
		}
		for _, j := range []int{1, 2} {
			deadline := time.Now().Add(converge)
			for c.BlobFiles(j)[id] != size {
				if time.Now().After(deadline) {
					b.Fatalf("node %d did not get the blob", j)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		b.StartTimer()
		order := []int{3, 4}
		if round%2 == 1 {
			order = []int{4, 3}
		}
		for _, cache := range order {
			start := time.Now()
			res, err := hc.Get(c.Nodes[cache].URL + "/" + id)
			if err != nil {
				b.Fatal(err)
			}
			var got bytes.Buffer
			_, err = got.ReadFrom(res.Body)
			res.Body.Close()
			if err != nil || res.StatusCode != http.StatusOK || !bytes.Equal(got.Bytes(), data) {
				b.Fatalf("node %d: %d, %v, %d bytes", cache, res.StatusCode, err, got.Len())
			}
			took[cache-3] += time.Since(start)
		}
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(took[0])/(rate/1000), "one/link")
	b.ReportMetric(mbps(took[1])/(rate/1000), "pieces/link")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "pieces/one")
}
