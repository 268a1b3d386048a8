// Command repllat measures replication latency for scripts/bench.sh: it
// uploads -n blobs of -size random bytes, one at a time, to the first
// node, and after each answer polls every other node with
// HEAD /<id>?nopeerload=1 every -poll until all hold it. It prints the
// time from the upload's answer to the last node holding it (p50, p90,
// p99, max), and the upload's own latency.
//
//	go run ./internal/repllat -n 200 -size 1048576 http://A http://B http://C
package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"slices"
	"time"

	"github.com/dtfc/dtfc"
)

func main() {
	n := flag.Int("n", 200, "uploads")
	size := flag.Int("size", 1<<20, "bytes per upload")
	poll := flag.Duration("poll", 2*time.Millisecond, "interval between polls of a node")
	timeout := flag.Duration("timeout", 30*time.Second, "give up on an upload after")
	flag.Parse()
	nodes := flag.Args()
	if len(nodes) < 2 {
		log.Fatal("repllat: give the node that takes uploads, then the others")
	}
	hc := &http.Client{Timeout: time.Minute}
	var repl, up []time.Duration
	body := make([]byte, *size)
	for i := 0; i < *n; i++ {
		rand.Read(body)
		id := dtfc.Sum(body).String()
		start := time.Now()
		res, err := hc.Post(nodes[0]+"/", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			log.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusCreated {
			log.Fatalf("upload %d: %s", i, res.Status)
		}
		answered := time.Now()
		up = append(up, answered.Sub(start))
		pending := slices.Clone(nodes[1:])
		for len(pending) > 0 {
			if time.Since(answered) > *timeout {
				log.Fatalf("upload %d: %v not held after %v", i, pending, *timeout)
			}
			pending = slices.DeleteFunc(pending, func(u string) bool { return held(hc, u, id) })
			if len(pending) > 0 {
				time.Sleep(*poll)
			}
		}
		repl = append(repl, time.Since(answered))
	}
	fmt.Printf("replication of %d x %d bytes to %d nodes (answer -> held by all): %s\n", *n, *size, len(nodes)-1, quantiles(repl))
	fmt.Printf("upload answered after: %s\n", quantiles(up))
}

func held(hc *http.Client, node, id string) bool {
	res, err := hc.Head(node + "/" + id + "?nopeerload=1")
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

func quantiles(d []time.Duration) string {
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[int(p*float64(len(d)-1))].Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v", q(0.5), q(0.9), q(0.99), q(1))
}
