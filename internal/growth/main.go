// Command growth fills a dtfc store with many small blobs through the
// blobstore package (the real write path: temp file, SHA-512, fsync,
// rename, metadata commit; concurrent writers share the commits), for
// scripts/bench-growth.sh. It adds blobs until the store holds -n.
//
//	go run ./internal/growth -dir DIR -n 100000 [-size 1024] [-workers 32]
package main

import (
	"bytes"
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
	if err := s.Close(); err != nil {
		log.Fatal(err)
	}
	blobs, _ := s.Stats()
	fmt.Printf("growth: the store holds %d blobs (%d added in %v)\n", blobs, blobs-have, time.Since(start).Round(time.Millisecond))
}
