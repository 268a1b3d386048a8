// Command minget is the net/http baseline of scripts/bench.sh for hits:
// the least a Go HTTP server does to serve a blob from a dtfc basedir,
// and nothing more (no record, no checks, no metrics, four headers).
// GET /<sha512> opens <dir>/ab/cd/<sha512> and answers it with
// http.ServeContent, which sends the file with sendfile as dtfc's hits
// do. What it serves per second is the ceiling of any handler on
// net/http's response path; dtfc's own work is the gap to it.
//
//	go run ./internal/minget -addr 127.0.0.1:8091 -dir BASEDIR/blobs
package main

import (
	"flag"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8091", "listen address")
	dir := flag.String("dir", "", "the blobs/ directory of a dtfc basedir")
	flag.Parse()
	if *dir == "" {
		log.Fatal("minget: -dir is required")
	}
	http.HandleFunc("GET /{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if len(id) != 128 || filepath.Base(id) != id {
			http.NotFound(w, r)
			return
		}
		f, err := os.Open(filepath.Join(*dir, id[0:2], id[2:4], id))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, f)
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
