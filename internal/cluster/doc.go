// Package cluster is a test harness that runs a cluster of real dtfc
// processes on loopback and lets a test break the network between them.
//
// Start builds ./cmd/dtfc once per test process (see Binary), starts the
// nodes, each with its own basedir, peer list file and log, and waits until
// every node answers /health. Unless Options.Direct is set, every directed
// link between two nodes goes through its own pair of proxies:
//
//	node i -> toxiproxy(i->j) -> corruptor(i->j) -> node j
//
// so node i knows node j by the URL of the toxiproxy listener, never by j's
// own --me. The toxiproxy (github.com/Shopify/toxiproxy/v2, run in-process)
// cuts links and adds latency or bandwidth limits (Cut, Partition, Latency,
// Bandwidth, Heal); the corruptor, a small reverse proxy of this package,
// flips a byte in the bodies it forwards (Corrupt), and can delay and
// throttle them too (Delay, Throttle: safe to switch while nodes restart,
// which toxiproxy's toxics are not, see slow.go). Everything listens on
// 127.0.0.1 only.
//
// Every process and proxy is stopped in t.Cleanup, also when the test
// fails; a failed test gets the tail of every node's log.
package cluster
