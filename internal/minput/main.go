// Command minput is the baseline of scripts/bench.sh for small uploads:
// the least an HTTP server must do to store an upload durably under its
// SHA-512, and nothing more (no metadata, no replication, no limits).
// Each PUT body is hashed while it is written to a temp file, which is
// fsynced and renamed to its hex SHA-512, and the directory fsynced.
//
//	go run ./internal/minput -addr 127.0.0.1:8090 -dir DIR
package main

import (
	"crypto/sha512"
	"encoding/hex"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	dir := flag.String("dir", "", "where uploads are stored")
	flag.Parse()
	if *dir == "" {
		log.Fatal("minput: -dir is required")
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	d, err := os.Open(*dir)
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("PUT /", func(w http.ResponseWriter, r *http.Request) {
		id, err := store(*dir, d, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, id+"\n")
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}

func store(dir string, d *os.File, body io.Reader) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(io.MultiWriter(f, h), body); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	id := hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(f.Name(), filepath.Join(dir, id)); err != nil {
		return "", err
	}
	return id, d.Sync()
}
