// Package server is dtfc's HTTP API: request parsing, status codes,
// headers, authentication and metrics. It decides every status code in one
// place (errorStatus) and leaves where bytes live to package blobstore and
// where other nodes are to the Cluster it is given.
//
// GET / is a status page for people (page.go, page.html: embedded, no
// JavaScript, reloading itself) showing the data of GET /_status; Recent
// keeps the node's latest warnings and errors for both.
package server
