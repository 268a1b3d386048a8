// Package server is dtfc's HTTP API: request parsing, status codes,
// headers, authentication and metrics. Every status code is decided in one
// place (internal/httpstatus.Of, shared with the node-to-node routes); it
// reads a blob through one call (Cluster.Open, or peer.OpenLocal for a
// node alone) and leaves where bytes live to package blobstore and where
// other nodes are to the Cluster it is given. GET /_status is an
// api.Status.
//
// GET / is a status page for people (page.go, page.html: embedded, no
// JavaScript, reloading itself) showing the data of GET /_status; Recent
// keeps the node's latest warnings and errors for both.
package server
