// Command minget is the baseline of scripts/bench.sh for hits: the least
// a Go server does to serve a blob from a dtfc basedir, and nothing more
// (no record, no checks, no metrics, four headers). GET /<sha512> opens
// <dir>/ab/cd/<sha512> and sends it with sendfile, as dtfc's hits do.
//
// By default it answers through net/http (http.ServeContent): what it
// serves per second is the ceiling of any handler on net/http's response
// path, and dtfc's own work is the gap to it. With -raw it parses and
// answers HTTP/1.1 itself (keep-alive GETs only; anything else closes the
// connection): the ceiling of a hit path written for this one job in Go,
// without net/http.
//
//	go run ./internal/minget -addr 127.0.0.1:8091 -dir BASEDIR/blobs [-raw]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8091", "listen address")
	dir := flag.String("dir", "", "the blobs/ directory of a dtfc basedir")
	raw := flag.Bool("raw", false, "answer HTTP/1.1 by hand, without net/http")
	flag.Parse()
	if *dir == "" {
		log.Fatal("minget: -dir is required")
	}
	if *raw {
		log.Fatal(serveRaw(*addr, *dir))
	}
	http.HandleFunc("GET /{id}", func(w http.ResponseWriter, r *http.Request) {
		f, err := open(*dir, r.PathValue("id"))
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

// open opens the blob file of id, a 128-digit hex ID.
func open(dir, id string) (*os.File, error) {
	if len(id) != 128 || filepath.Base(id) != id {
		return nil, os.ErrNotExist
	}
	return os.Open(filepath.Join(dir, id[0:2], id[2:4], id))
}

func serveRaw(addr, dir string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go serveConn(c, dir)
	}
}

// serveConn answers the GETs of one connection until it closes or sends
// anything else.
func serveConn(c net.Conn, dir string) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	hdr := make([]byte, 0, 512)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		method, rest, ok := bytes.Cut(line, []byte(" "))
		target, _, ok2 := bytes.Cut(rest, []byte(" "))
		if !ok || !ok2 || string(method) != "GET" || len(target) < 1 {
			return
		}
		id := string(target[1:])
		for { // the headers, skipped
			l, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(bytes.TrimSpace(l)) == 0 {
				break
			}
		}
		f, err := open(dir, id)
		if err != nil {
			c.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
			continue
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return
		}
		hdr = append(hdr[:0], "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "...)
		hdr = strconv.AppendInt(hdr, fi.Size(), 10)
		hdr = append(hdr, "\r\nAccept-Ranges: bytes\r\nDate: "...)
		hdr = time.Now().UTC().AppendFormat(hdr, http.TimeFormat)
		hdr = append(hdr, "\r\n\r\n"...)
		_, err = c.Write(hdr)
		if err == nil {
			_, err = io.Copy(c, f) // sendfile
		}
		f.Close()
		if err != nil {
			return
		}
	}
}
