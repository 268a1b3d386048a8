// Package api holds the JSON documents of dtfc's HTTP API (API.md) as Go
// types, written once: the server encodes them, and the Go client, the
// test harness and the soak decode the same types. It depends on nothing
// but the root package.
package api
