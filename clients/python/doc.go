// Package python holds the Go test that runs the Python client's tests.
//
// The client itself (the dtfc package and dtfc.django) is Python, beside
// this file; this package only lets `go test ./...` run its pytest suite
// against a freshly built dtfc.
package python
