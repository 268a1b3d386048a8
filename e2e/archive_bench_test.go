package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// The archive benchmarks (issue 13, item 7), run by
// scripts/bench-archive.sh against versitygw on loopback. Each reports
// its figures against a baseline measured in the same run.

// benchBucket is a bucket under a prefix for a benchmark.
func benchBucket(tb testing.TB, s *versitygw.Server, prefix string) *bucket {
	tb.Helper()
	secret := versitygw.SecretFile(tb)
	a, err := archive.New(context.Background(), archive.Config{Bucket: s.Bucket, Prefix: prefix, Endpoint: s.URL, PathStyle: true,
		AccessKeyID: versitygw.AccessKey, SecretAccessKeyFile: secret})
	if err != nil {
		tb.Fatal(err)
	}
	return &bucket{s: s, prefix: prefix, secret: secret, a: a}
}

// benchNode starts one node whose only peer is the archive b.
func benchNode(tb testing.TB, b *bucket, args ...string) *cluster.Cluster {
	tb.Helper()
	return cluster.Start(tb, cluster.Options{Nodes: 1, Direct: true, Args: args,
		ExtraPeers: func(int) string { return b.entry() }})
}

// randomFile writes size pseudo-random bytes, new in this process, to a
// file in dir and returns its path and ID.
func randomFile(tb testing.TB, dir string, size int64) (string, dtfc.ID) {
	tb.Helper()
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uniq.Add(1))
	binary.LittleEndian.PutUint64(seed[8:], uint64(time.Now().UnixNano()))
	path := filepath.Join(dir, fmt.Sprintf("rand-%d", uniq.Add(1)))
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha512.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.CopyN(w, rand.NewChaCha8(seed), size); err != nil {
		tb.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	id, err := dtfc.ParseID(hex.EncodeToString(h.Sum(nil)))
	if err != nil {
		tb.Fatal(err)
	}
	return path, id
}

// quantile returns the q-quantile (nearest rank) of ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// BenchmarkArchiveOnArchive: the time from an upload's 201 to its state
// record being visible in the bucket (listed through S3, polled every
// 2 ms), over 100 uploads of 1 MiB, against a plain PutObject of 1 MiB
// to the same server by the benchmark (the baseline), interleaved.
//
//	go test -run XXX -bench ArchiveOnArchive -benchtime 1x ./e2e/
func BenchmarkArchiveOnArchive(b *testing.B) {
	const uploads = 100
	const size = 1 << 20
	s := versitygw.ForTest(b)
	bk := benchBucket(b, s, "lat")
	c := benchNode(b, bk, "--archive-interval", "1h")
	hc := &http.Client{}
	client := s.Client()
	ctx := b.Context()
	var lat, base []time.Duration
	for b.Loop() {
		lat, base = lat[:0], base[:0]
		for range uploads {
			data := randomBytes(size)
			status, id, err := tryUpload(ctx, hc, c.Nodes[0].URL, "one.bin", data)
			if err != nil || status != http.StatusCreated {
				b.Fatalf("upload: %d, %v", status, err)
			}
			acked := time.Now()
			pid := mustIDb(b, id)
			deadline := acked.Add(30 * time.Second)
			for {
				if _, err := bk.a.NewestState(ctx, pid); err == nil {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("upload %s not in the bucket within 30 s", id[:12])
				}
				time.Sleep(2 * time.Millisecond)
			}
			lat = append(lat, time.Since(acked))

			t0 := time.Now()
			_, err = client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.Bucket),
				Key: aws.String(fmt.Sprintf("baseline/%s", id)), Body: bytes.NewReader(randomBytes(size)), ContentLength: aws.Int64(size)})
			if err != nil {
				b.Fatal(err)
			}
			base = append(base, time.Since(t0))
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(quantile(lat, 0.5)), "p50-ms")
	b.ReportMetric(ms(quantile(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(quantile(base, 0.5)), "put-p50-ms")
	b.ReportMetric(ms(quantile(base, 0.99)), "put-p99-ms")
	b.ReportMetric(ms(quantile(lat, 0.5))/ms(quantile(base, 0.5)), "p50/put")
}

func mustIDb(tb testing.TB, s string) dtfc.ID {
	id, err := dtfc.ParseID(s)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// BenchmarkArchiveMiss: a GET of a 1 GiB blob on a node that lacks it
// and whose only peer is the bucket (a new node each round: the miss is
// read from the bucket, verified, stored and served), against a plain
// GetObject of the same object from the S3 server, the two alternating.
// Reports each one's rate and their ratio (issue 13 asks >= 0.8), and
// the miss against one-core SHA-512 measured between the rounds (a miss
// hashes every byte: its ceiling).
//
//	go test -run XXX -bench ArchiveMiss -benchtime 3x ./e2e/
func BenchmarkArchiveMiss(b *testing.B) {
	const size = 1 << 30
	s := versitygw.ForTest(b)
	bk := benchBucket(b, s, "miss")
	ctx := b.Context()
	path, id := randomFile(b, b.TempDir(), size)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := bk.a.PutBlob(ctx, id, f, size); err != nil {
		b.Fatal(err)
	}
	f.Close()
	os.Remove(path)
	// A record with no log entry: the relay never fetches it, only the
	// miss does.
	if err := bk.a.PutState(ctx, dtfc.State{ID: id, Clock: dtfc.TimestampAt(time.Now()), Node: "7e57", Size: size}); err != nil {
		b.Fatal(err)
	}
	client := s.Client()
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	direct := func() time.Duration {
		t0 := time.Now()
		out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(bk.a.BlobKey(id))})
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, out.Body)
		out.Body.Close()
		if err != nil || n != size {
			b.Fatalf("direct GET: %d bytes, %v", n, err)
		}
		return time.Since(t0)
	}
	miss := func() time.Duration {
		b.StopTimer()
		c := benchNode(b, bk, "--archive-interval", "1h")
		b.StartTimer()
		t0 := time.Now()
		res, err := hc.Get(c.Nodes[0].URL + "/" + id.String())
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		d := time.Since(t0)
		if err != nil || n != size || res.StatusCode != http.StatusOK || res.Header.Get("X-Dtfc-Source") != "peer" {
			b.Fatalf("miss: %s, %d bytes, %v", res.Status, n, err)
		}
		b.StopTimer()
		c.Nodes[0].Stop()
		os.RemoveAll(c.Nodes[0].Basedir)
		b.StartTimer()
		return d
	}
	// The ceiling of a miss: it hashes every byte once, on one core.
	buf := randomBytes(256 << 20)
	hash := func() time.Duration {
		b.StopTimer()
		defer b.StartTimer()
		t0 := time.Now()
		for range size / len(buf) {
			sha512.Sum512(buf)
		}
		return time.Since(t0)
	}
	direct() // warm the page cache
	var tm, td, th time.Duration
	round := 0
	for b.Loop() {
		if round%2 == 0 {
			tm += miss()
			td += direct()
		} else {
			td += direct()
			tm += miss()
		}
		th += hash()
		round++
	}
	rate := func(d time.Duration) float64 { return float64(size) * float64(round) / d.Seconds() / 1e6 }
	b.ReportMetric(rate(tm), "miss-MB/s")
	b.ReportMetric(rate(td), "direct-MB/s")
	b.ReportMetric(rate(th), "sha512-MB/s")
	b.ReportMetric(td.Seconds()/tm.Seconds(), "miss/direct")
	b.ReportMetric(th.Seconds()/tm.Seconds(), "miss/sha512")
}

// BenchmarkArchiveRelay: the delay from an upload's 201 on node A to
// node B holding the blob, where the only common peer of A and B is the
// bucket, with archive_interval at its default (10s) and at 1s (two
// pairs of nodes, two prefixes), the pairs alternating, each upload
// after a random pause within the interval. Reports each delay's mean
// and max, and the mean against the interval (about 0.5 plus the push
// and the fetch).
//
//	go test -run XXX -bench ArchiveRelay -benchtime 5x ./e2e/
func BenchmarkArchiveRelay(b *testing.B) {
	s := versitygw.ForTest(b)
	type pair struct {
		name     string
		interval time.Duration
		a, b     *cluster.Cluster
		delays   []time.Duration
	}
	pairs := []*pair{{name: "default", interval: 10 * time.Second}, {name: "1s", interval: time.Second}}
	for _, p := range pairs {
		bk := benchBucket(b, s, "relay-"+p.name)
		var args []string
		if p.name != "default" {
			args = []string{"--archive-interval", p.interval.String()}
		}
		p.a, p.b = benchNode(b, bk, args...), benchNode(b, bk, args...)
	}
	hc := &http.Client{}
	ctx := b.Context()
	held := func(base, id string) bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, base+"/"+id+"?nopeerload=1", nil)
		res, err := hc.Do(req)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}
	round := 0
	for b.Loop() {
		order := pairs
		if round%2 == 1 {
			order = []*pair{pairs[1], pairs[0]}
		}
		for _, p := range order {
			// Uploads come at any moment of the relay's period: without
			// this pause each would follow the round that brought the
			// last one, and wait a whole interval.
			b.StopTimer()
			time.Sleep(time.Duration(rand.Int64N(int64(p.interval))))
			b.StartTimer()
			status, id, err := tryUpload(ctx, hc, p.a.Nodes[0].URL, "relayed.bin", randomBytes(64<<10))
			if err != nil || status != http.StatusCreated {
				b.Fatalf("upload: %d, %v", status, err)
			}
			acked := time.Now()
			deadline := acked.Add(3*p.interval + 30*time.Second)
			for !held(p.b.Nodes[0].URL, id) {
				if time.Now().After(deadline) {
					b.Fatalf("%s: B did not get the upload", p.name)
				}
				time.Sleep(10 * time.Millisecond)
			}
			p.delays = append(p.delays, time.Since(acked))
		}
		round++
	}
	for _, p := range pairs {
		var sum time.Duration
		for _, d := range p.delays {
			sum += d
		}
		mean := sum / time.Duration(len(p.delays))
		b.ReportMetric(mean.Seconds(), p.name+"-mean-s")
		b.ReportMetric(slices.Max(p.delays).Seconds(), p.name+"-max-s")
		b.ReportMetric(mean.Seconds()/p.interval.Seconds(), p.name+"-mean/interval")
	}
}
