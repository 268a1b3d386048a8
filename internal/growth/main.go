// Command growth fills a dtfc store with many small blobs through the
// blobstore package (the real write path: temp file, SHA-512, fsync,
// rename, metadata commit; concurrent writers share the commits), for
// scripts/bench-growth.sh. It adds blobs until the store holds -n; with
// -scrub it then times one scrub pass at that rate (bytes/s, 0 = no
// limit), as a node's scrubber makes it.
//
//	go run ./internal/growth -dir DIR -n 100000 [-size 1024] [-workers 32] [-scrub 67108864]
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dtfc/dtfc/blobstore"
)

func main() {
	dir := flag.String("dir", "", "the node's basedir (created if missing)")
	n := flag.Int64("n", 10000, "blobs the store holds when done")
	size := flag.Int("size", 1024, "bytes per blob")
	workers := flag.Int("workers", 32, "concurrent writers")
	seed := flag.Uint64("seed", 1, "first bytes of blob i are (seed, i): distinct blobs")
	scrub := flag.Int64("scrub", -1, "then time a scrub pass at this many bytes/s (0: no limit; -1: none)")
	flag.Parse()
	if *dir == "" || *n < 1 || *size < 16 {
		flag.Usage()
		os.Exit(2)
	}
	s, err := blobstore.Open(*dir, blobstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	have, _ := s.Stats()
	start := time.Now()
	var next atomic.Int64
	next.Store(have)
	var wg sync.WaitGroup
	errs := make(chan error, *workers)
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{0x5a}, *size)
			for {
				i := next.Add(1)
				if i > *n {
					return
				}
				binary.BigEndian.PutUint64(buf[0:8], *seed)
				binary.BigEndian.PutUint64(buf[8:16], uint64(i))
				w, err := s.NewWriter(blobstore.WriterOptions{})
				if err == nil {
					_, err = w.ReadFrom(bytes.NewReader(buf))
				}
				if err == nil {
					_, err = w.Commit(blobstore.Upload{})
				}
				if w != nil {
					w.Close()
				}
				if err != nil {
					errs <- err
					return
				}
				if i%20000 == 0 {
					fmt.Fprintf(os.Stderr, "growth: %d blobs, %.0f/s\n", i, float64(i-have)/time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		log.Fatal(err)
	}
	blobs, _ := s.Stats()
	fmt.Printf("growth: the store holds %d blobs (%d added in %v)\n", blobs, blobs-have, time.Since(start).Round(time.Millisecond))
	if *scrub >= 0 {
		t0 := time.Now()
		if err := s.Scrub(context.Background(), *scrub, nil); err != nil {
			log.Fatal(err)
		}
		p := s.ScrubProgress()
		el := time.Since(t0)
		fmt.Printf("growth: scrub pass: %d blobs, %d bytes in %v (%.0f blobs/s, %.1f MB/s)\n", p.Checked, p.CheckedBytes,
			el.Round(time.Millisecond), float64(p.Checked)/el.Seconds(), float64(p.CheckedBytes)/el.Seconds()/1e6)
		if p.Corrupt+p.Unreadable != 0 {
			log.Fatalf("growth: the scrub found %d corrupt and %d unreadable blobs", p.Corrupt, p.Unreadable)
		}
	}
	if err := s.Close(); err != nil {
		log.Fatal(err)
	}
}
