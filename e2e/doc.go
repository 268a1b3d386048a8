// Package e2e holds dtfc's end-to-end fault tests: every test starts a
// cluster of real dtfc processes on loopback with the harness of
// internal/cluster (toxiproxy and a corrupting proxy on every directed
// link between two nodes) and checks one promise of the Consistency
// section of API.md while it breaks the cluster: a node down and back, a
// cut link, corruption in transit and on disk, kill -9 under load, the
// last-writer-wins rule, a new node joining, a node restored from an old
// copy, forgotten tombstones, a full disk.
//
// The package holds nothing but tests (this file excepted). They need the
// go tool to build ./cmd/dtfc and take about two minutes; the disk-full test
// needs root to mount a tmpfs and is skipped otherwise. Set DTFC_E2E_SEED to
// replay the random operation stream of TestKill9UnderLoad, and
// DTFC_TEST_RACE_BINARY=1 to run the nodes with the race detector.
package e2e
