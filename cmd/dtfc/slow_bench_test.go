package main_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkSlowClients measures GET latency on a real node while 500
// clients trickle (half never finish their headers, half send an upload
// body a byte at a time), against the same measurement with no slow
// clients, in the same run:
//
//	go test -run XXX -bench SlowClients -benchtime 2000x ./cmd/dtfc/
func BenchmarkSlowClients(b *testing.B) {
	dir := b.TempDir()
	p := startServer(b, filepath.Join(dir, "data"), "--read-header-timeout", "60s", "--idle-timeout", "60s")
	url := p.url
	data := []byte("a small file served to the impatient")
	req, _ := http.NewRequest(http.MethodPut, url+"/f.txt", strings.NewReader(string(data)))
	resp, err := httpClient.Do(req)
	require.NoError(b, err)
	resp.Body.Close()
	target := url + "/" + sum(data)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer hc.CloseIdleConnections()

	measure := func(n int) []time.Duration {
		lat := make([]time.Duration, 0, n)
		for range n {
			start := time.Now()
			resp, err := hc.Get(target)
			require.NoError(b, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			require.Equal(b, http.StatusOK, resp.StatusCode)
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		return lat
	}
	pct := func(l []time.Duration, q float64) float64 {
		return float64(l[int(float64(len(l)-1)*q)].Microseconds()) / 1000
	}
	n := max(b.N, 200)
	base := measure(n)

	const slow = 500
	stop := make(chan struct{})
	var wg sync.WaitGroup
	host := strings.TrimPrefix(url, "http://")
	for i := range slow {
		c, err := net.Dial("tcp", host)
		require.NoError(b, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if i%2 == 0 {
				fmt.Fprintf(c, "GET /%s HTTP/1.1\r\nHost: x\r\n", sum(data))
			} else {
				fmt.Fprintf(c, "PUT /slow%d HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", i)
			}
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					c.Write([]byte("x"))
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // let the trickle start (a setup pause, not a wait on a result)
	b.ResetTimer()
	loaded := measure(n)
	b.StopTimer()
	close(stop)
	wg.Wait()
	b.ReportMetric(pct(base, 0.5), "base-p50-ms")
	b.ReportMetric(pct(base, 0.99), "base-p99-ms")
	b.ReportMetric(pct(loaded, 0.5), "slow-p50-ms")
	b.ReportMetric(pct(loaded, 0.99), "slow-p99-ms")
	b.ReportMetric(pct(loaded, 0.99)/pct(base, 0.99), "p99-ratio")
}
