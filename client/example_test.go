package client_test

import (
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/server"
)

// exampleNode starts a dtfc node in this process (a store in a temporary
// directory behind an httptest server) and returns its URL and a function
// that stops it and removes its files. In real use, the URL is that of a
// running dtfc.
func exampleNode() (url string, stop func()) {
	dir, err := os.MkdirTemp("", "dtfc-example-")
	if err != nil {
		log.Fatal(err)
	}
	store, err := blobstore.Open(dir, blobstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	api := server.New(server.Config{Me: "http://" + srv.Listener.Addr().String()}, store)
	srv.Config.Handler = api
	srv.Start()
	return srv.URL, func() {
		srv.Close()
		api.Wait()
		store.Close()
		os.RemoveAll(dir)
	}
}

func ExampleClient_Put() {
	url, stop := exampleNode()
	defer stop()

	c, err := client.New([]string{url}, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Put(context.Background(), strings.NewReader("hello, dtfc\n"), client.PutOptions{Filename: "hello.txt"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("id:", res.ID.String()[:16]+"…")
	fmt.Println("size:", res.Size, "created:", res.Created)
	fmt.Println("location is the node's:", strings.HasPrefix(res.Location, url+"/"))
	// Output:
	// id: ee83560e14ab1be3…
	// size: 12 created: true
	// location is the node's: true
}

func ExampleClient_Get() {
	url, stop := exampleNode()
	defer stop()
	c, _ := client.New([]string{url}, client.Options{})
	ctx := context.Background()
	res, err := c.Put(ctx, strings.NewReader("hello, dtfc\n"), client.PutOptions{Filename: "hello.txt"})
	if err != nil {
		log.Fatal(err)
	}

	// The reader verifies the bytes as they stream: reading to the end
	// either gives every byte of the file, or fails with
	// client.ErrDigestMismatch.
	rc, err := c.Get(ctx, res.ID)
	if err != nil {
		log.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.Copy(os.Stdout, rc); err != nil {
		log.Fatal(err)
	}
	// Output:
	// hello, dtfc
}

func ExampleClient_Put_expected() {
	url, stop := exampleNode()
	defer stop()
	c, _ := client.New([]string{url}, client.Options{})

	// With the ID the bytes must have, the node refuses other bytes and
	// stores nothing.
	want := dtfc.ID(sha512Sum("the real thing"))
	_, err := c.Put(context.Background(), strings.NewReader("something else"), client.PutOptions{Expected: want})
	fmt.Println(errors.Is(err, client.ErrDigestMismatch))
	// Output:
	// true
}

func ExampleClient_Stat() {
	url, stop := exampleNode()
	defer stop()
	c, _ := client.New([]string{url}, client.Options{})
	ctx := context.Background()
	res, _ := c.Put(ctx, strings.NewReader("<p>hi</p>"), client.PutOptions{Filename: "hi.html"})

	info, err := c.Stat(ctx, res.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Size, info.ContentType, info.Source)
	// Output:
	// 9 text/html; charset=utf-8 local
}

func ExampleClient_Delete() {
	url, stop := exampleNode()
	defer stop()
	c, _ := client.New([]string{url}, client.Options{})
	ctx := context.Background()
	res, _ := c.Put(ctx, strings.NewReader("short-lived"), client.PutOptions{Filename: "tmp.txt"})

	if err := c.Delete(ctx, res.ID); err != nil {
		log.Fatal(err)
	}
	_, err := c.Get(ctx, res.ID)
	fmt.Println("gone:", errors.Is(err, client.ErrNotFound))
	// Output:
	// gone: true
}

func ExampleClient_Status() {
	url, stop := exampleNode()
	defer stop()
	c, _ := client.New([]string{url}, client.Options{})
	ctx := context.Background()
	c.Put(ctx, strings.NewReader("one"), client.PutOptions{Filename: "1.txt"})

	st, err := c.Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Role, st.Blobs)
	// Output:
	// replica 1
}

func ExampleNew() {
	url, stop := exampleNode()
	defer stop()

	// Several nodes of one cluster: each call tries them in turn until
	// one answers (here the first is down).
	c, err := client.New([]string{"http://127.0.0.1:1", url}, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Put(context.Background(), strings.NewReader("still stored"), client.PutOptions{Filename: "s.txt"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Created)
	// Output:
	// true
}

func sha512Sum(s string) [64]byte { return sha512.Sum512([]byte(s)) }
