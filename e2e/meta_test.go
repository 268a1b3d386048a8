package e2e_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/internal/cluster"
)

// The tests of this file damage a stopped node's meta.db the four ways
// found in the field (removed, truncated, bytes flipped, pages zeroed)
// and check README's "When the metadata is damaged": the node refuses to
// start with a message naming dtfc rebuild-meta, a kill -9 at that moment
// changes nothing, no blob file is ever deleted, and after the rebuild
// every blob is back, no deleted one returns and the node keeps its
// identity.

// metaDamage is one way of damaging a stopped node's meta.db.
type metaDamage struct {
	name string
	// how is the harness's name of the damage (cluster.DamageMeta).
	how string
	// says is what the refusal must call the metadata.
	says string
}

var metaDamages = []metaDamage{
	{"Removed", cluster.MetaRemoved, "missing"},
	{"Truncated", cluster.MetaTruncated, "damaged"},
	{"FlippedBytes", cluster.MetaFlipped, "damaged"},
	{"ZeroedPages", cluster.MetaZeroed, "damaged"},
}

func metaPath(n *cluster.Node) string { return n.MetaPath() }

// nodeArgs is node n's command line as the harness gives it.
func nodeArgs(n *cluster.Node) []string {
	a := []string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(n.Port), "--me", n.URL,
		"--basedir", n.Basedir, "--peerlist", n.PeerList, "--role", string(n.Role),
		"--anti-entropy-interval", "2s", "--scrub-interval", "0"}
	if n.Config != "" {
		a = append(a, "--config", n.Config)
	}
	return a
}

// startOutcome is how a start of a node outside the harness ended.
type startOutcome struct {
	exited bool // false: it served /health instead, and was killed
	code   int
	output string
}

// tryStart runs node n's process outside the harness (the harness's Start
// fails the test unless the node serves) and waits until it exits or
// serves /health; one that serves is killed with SIGKILL at once (it
// should not have started: this is how finding 1 of the issue went on).
// Its output is appended to the node's log, where the harness looks for
// Go traces.
func tryStart(t *testing.T, c *cluster.Cluster, hc *http.Client, n *cluster.Node) startOutcome {
	t.Helper()
	cmd, out, done := startProcess(t, c, n)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			return startOutcome{exited: true, code: cmd.ProcessState.ExitCode(), output: out.String()}
		default:
		}
		if res, err := hc.Get(n.URL + "/health"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				_ = cmd.Process.Kill()
				<-done
				return startOutcome{output: out.String()}
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("node %d neither exited nor served within 30 s:\n%s", n.Index, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startProcess starts node n's process; done is closed once it has exited
// (cmd.ProcessState is then set). It is killed in t.Cleanup if still
// running.
func startProcess(t *testing.T, c *cluster.Cluster, n *cluster.Node) (*exec.Cmd, *cluster.Output, <-chan struct{}) {
	t.Helper()
	out := &cluster.Output{}
	cmd := exec.Command(cluster.Binary(t), nodeArgs(n)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill() // our own child, by its PID
			<-done
		}
		appendLog(t, n, fmt.Sprintf("=== e2e: a start outside the harness (pid %d): %s\n%s", cmd.Process.Pid, cmd.ProcessState, out))
	})
	return cmd, out, done
}

func appendLog(t *testing.T, n *cluster.Node, s string) {
	f, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Errorf("node %d log: %v", n.Index, err)
		return
	}
	defer f.Close()
	fmt.Fprintln(f, s)
}

// traceMarkers are what a Go crash prints.
var traceMarkers = []string{"goroutine ", "panic:", "fatal error:", "SIGSEGV", "SIGBUS", "[signal"}

// assertRefused checks a start that had to refuse: exit status 1, a
// message saying the metadata is <says> and naming the command to run,
// and no Go trace.
func assertRefused(t *testing.T, n *cluster.Node, o startOutcome, says string) {
	t.Helper()
	if !assert.True(t, o.exited, "node %d started on %s metadata instead of refusing:\n%s", n.Index, says, o.output) {
		return
	}
	assert.Equal(t, 1, o.code, "exit status of a start on %s metadata:\n%s", says, o.output)
	for _, m := range traceMarkers {
		assert.NotContains(t, o.output, m, "a Go trace instead of a message")
	}
	assert.Contains(t, o.output, "metadata is "+says)
	assert.Contains(t, o.output, metaPath(n))
	assert.Contains(t, o.output, "dtfc rebuild-meta --basedir "+n.Basedir, "the message names the command to run")
}

// killRightAfterStart starts node n and kills it with SIGKILL after
// delay, wherever its start-up is by then (a process that has exited
// already is not signalled): a start that refuses must leave nothing a
// later start would act on.
func killRightAfterStart(t *testing.T, c *cluster.Cluster, n *cluster.Node, delay time.Duration) {
	t.Helper()
	cmd, _, done := startProcess(t, c, n)
	select {
	case <-done:
	case <-time.After(delay):
		_ = cmd.Process.Kill() // our own child, by its PID
		<-done
	}
}

// populate uploads files to the given nodes in turn, deletes some of them
// and returns the live ones (ID to bytes) and the deleted IDs.
func populate(t *testing.T, hc *http.Client, urls []string, uploads, deletes int) (map[string][]byte, []string) {
	t.Helper()
	live := map[string][]byte{}
	var ids []string
	for i := range uploads {
		data := randomBytes(1000 + 997*i)
		_, id := upload(t, hc, urls[i%len(urls)], fmt.Sprintf("f%d.bin", i), data)
		live[id] = data
		ids = append(ids, id)
	}
	var deleted []string
	for _, id := range ids[:deletes] {
		deleteID(t, hc, urls[len(deleted)%len(urls)], id)
		delete(live, id)
		deleted = append(deleted, id)
	}
	return live, deleted
}

// nodeIdentity is node i's node ID, as it tells its peers.
func nodeIdentity(t *testing.T, c *cluster.Cluster, i int) string {
	t.Helper()
	d, err := c.Digests(i)
	require.NoError(t, err)
	require.NotEmpty(t, d.Node)
	return d.Node
}

// status is node i's /_status.
func status(t *testing.T, c *cluster.Cluster, i int) *api.Status {
	t.Helper()
	st, err := c.Status(i)
	require.NoError(t, err)
	return st
}

// plantBlob writes data as a valid blob file into node n's blobs/, as a
// file the cluster deleted and forgot long ago would be found there.
func plantBlob(t *testing.T, n *cluster.Node, data []byte) string {
	t.Helper()
	id := idOf(data)
	p := blobPath(n, id)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return id
}

// plantBlobAt plants data like plantBlob, its file dated as dtfc dates
// the file of a state of clock c (blobstore/filetime.go).
func plantBlobAt(t *testing.T, n *cluster.Node, data []byte, c uint64) string {
	t.Helper()
	id := plantBlob(t, n, data)
	tm := time.UnixMilli(int64(c >> 16)).Add(time.Duration(c & 0xffff))
	require.NoError(t, os.Chtimes(blobPath(n, id), time.Time{}, tm))
	return id
}

// clockNow is a clock of the present moment, as a node would stamp it.
func clockNow() uint64 { return uint64(time.Now().UnixMilli())<<16 | 7 }

// refuseTwice damages nothing itself: it checks, on node n whose
// metadata is damaged, that a start refuses, that starts killed with
// kill -9 at several moments (right after exec, 10 ms and 30 ms later)
// change nothing, and that a start then refuses again, with n's blob
// files untouched throughout.
func refuseTwice(t *testing.T, c *cluster.Cluster, hc *http.Client, n *cluster.Node, says string) {
	t.Helper()
	before := c.BlobFiles(n.Index)
	assertRefused(t, n, tryStart(t, c, hc, n), says)
	for _, d := range []time.Duration{0, 10 * time.Millisecond, 30 * time.Millisecond} {
		killRightAfterStart(t, c, n, d)
	}
	assertRefused(t, n, tryStart(t, c, hc, n), says)
	require.Equal(t, before, c.BlobFiles(n.Index), "node %d's blobs/ changed: a blob file was deleted or moved", n.Index)
}

// TestMetaDamagedSingleNode: a node without peers whose meta.db is
// removed, truncated, flipped or zeroed refuses to start (exit status 1,
// a message naming dtfc rebuild-meta, no Go trace), also after a kill -9
// right after a start, and deletes no blob file; after dtfc rebuild-meta
// it adopts every blob it holds under its old identity, and no deleted
// blob returns. The Removed case is finding 1 of the issue (a new
// identity, every file 404, then every file deleted after a kill -9).
// About 3 s per case.
func TestMetaDamagedSingleNode(t *testing.T) {
	for _, d := range metaDamages {
		t.Run(d.name, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{Nodes: 1})
			hc := newClient(t)
			n := c.Nodes[0]
			live, deleted := populate(t, hc, []string{n.URL}, 40, 10)
			node := nodeIdentity(t, c, 0)
			n.Stop()
			before := c.BlobFiles(0)
			require.Len(t, before, len(live))
			require.NoError(t, cluster.DamageMeta(metaPath(n), d.how))

			refuseTwice(t, c, hc, n, d.says)

			out := n.RebuildMeta()
			assert.Contains(t, out, fmt.Sprintf("verified:    %d files", len(live)))
			assert.Contains(t, out, "quarantined: 0 files")
			assert.Contains(t, out, "node "+node)
			assertMovedAside(t, n, d.name != "Removed")

			n.Start()
			eventually(t, converge, "the node adopts every unconfirmed blob", func() bool {
				return status(t, c, 0).Unconfirmed == 0 && status(t, c, 0).Blobs == int64(len(live))
			})
			assert.Equal(t, node, nodeIdentity(t, c, 0), "the node's identity after the rebuild")
			for id := range live {
				res, body := get(t, hc, n.URL+"/"+id)
				if assert.Equal(t, http.StatusOK, res.StatusCode, "GET %s", short(id)) {
					assert.Equal(t, idOf(body), id)
					assert.Equal(t, "local", res.Header.Get("X-Dtfc-Source"))
				}
			}
			for _, id := range deleted {
				res, _ := get(t, hc, n.URL+"/"+id)
				assert.Equal(t, http.StatusNotFound, res.StatusCode, "GET of deleted %s", short(id))
			}
			assert.Equal(t, before, c.BlobFiles(0), "blobs/ after the rebuild")
			_, bad := wrongBlobs(n)
			assert.Empty(t, bad)
			assert.Empty(t, filesIn(t, filepath.Join(n.Basedir, "unconfirmed")))
			c.CheckNoTemp(t)
		})
	}
}

// assertMovedAside checks that the damaged meta.db was kept beside the
// new one (moved aside, never deleted), if there was one.
func assertMovedAside(t *testing.T, n *cluster.Node, had bool) {
	t.Helper()
	aside, err := filepath.Glob(metaPath(n) + ".damaged-*")
	require.NoError(t, err)
	if had {
		assert.Len(t, aside, 1, "the damaged meta.db kept aside")
	} else {
		assert.Empty(t, aside)
	}
}

// filesIn lists the regular files under dir (relative paths); a missing
// dir is empty.
func filesIn(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path == dir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

// TestMetaDamagedCluster: in a cluster of three with uploads and deletes
// replicated, a node's meta.db is damaged while it is down, after more
// deletes (of files it still holds) and uploads, beside a valid blob no
// node knows (an upload it took and never passed on) and one the cluster
// deleted and forgot lately. The node refuses to start, deletes nothing,
// and after dtfc rebuild-meta: adopts every live blob with its peers'
// state and without downloading it, applies the deletes it missed,
// removes the blob whose delete its peers remember forgetting (its file
// dated before the delete), adopts the unknown one and one whose file is
// newer than its forgotten delete (an upload after it) with the clocks
// their files record (so they are not lost and replicate), keeps its
// identity, and the cluster converges with no blob lost and no deleted
// blob back. 3 to 6 s per case.
func TestMetaDamagedCluster(t *testing.T) {
	for _, d := range metaDamages {
		t.Run(d.name, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", "1s"}})
			hc := newClient(t)
			urls := []string{c.Nodes[0].URL, c.Nodes[1].URL, c.Nodes[2].URL}
			live, deleted := populate(t, hc, urls, 30, 8)
			forgottenData, againData := randomBytes(6000), randomBytes(6500)
			_, forgotten := upload(t, hc, urls[0], "forgotten", forgottenData)
			_, again := upload(t, hc, urls[0], "again", againData)
			c.WaitConverged(t, converge)
			_, forgottenState := stateOf(t, c, hc, 0, forgotten)
			deleteID(t, hc, urls[0], forgotten)
			deleteID(t, hc, urls[0], again)
			eventually(t, converge, "every node forgets the deletes", func() bool {
				for i := range c.Nodes {
					for _, id := range []string{forgotten, again} {
						if s, _ := stateOf(t, c, hc, i, id); s != http.StatusNotFound {
							return false
						}
					}
				}
				return true
			})

			x := c.Nodes[1]
			node := nodeIdentity(t, c, 1)
			x.Stop()
			// While x is down: deletes of files it holds, and small
			// uploads it lacks.
			n := 0
			for id := range live {
				if n == 3 {
					break
				}
				deleteID(t, hc, c.Nodes[0].URL, id)
				delete(live, id)
				deleted = append(deleted, id)
				n++
			}
			var missed int64
			for i := range 2 {
				data := randomBytes(100 + i)
				_, id := upload(t, hc, c.Nodes[2].URL, fmt.Sprintf("while-down-%d", i), data)
				live[id] = data
				missed += int64(len(data))
			}
			// Planted as they would be on node 1: a blob no node knows
			// (an upload it never passed on), the blob whose delete it
			// missed and the cluster forgot (its file dated by its
			// upload), and one uploaded again to it after its delete was
			// forgotten (dated after it).
			unknownData, unknownClock := randomBytes(7000), clockNow()
			unknown := plantBlobAt(t, x, unknownData, unknownClock)
			require.Equal(t, forgotten, plantBlobAt(t, x, forgottenData, forgottenState.Clock))
			againClock := clockNow() + 1
			require.Equal(t, again, plantBlobAt(t, x, againData, againClock))
			c.WaitConverged(t, converge)
			require.NoError(t, cluster.DamageMeta(metaPath(x), d.how))

			refuseTwice(t, c, hc, x, d.says)
			for _, i := range []int{0, 2} {
				require.True(t, c.Nodes[i].Running(), "node %d", i)
			}

			held := len(c.BlobFiles(1))
			out := x.RebuildMeta()
			assert.Contains(t, out, fmt.Sprintf("verified:    %d files", held))
			assertMovedAside(t, x, d.name != "Removed")

			// The others cannot push to node 1 until it has resolved its
			// unconfirmed blobs: what it learns of the deletes it missed,
			// it learns by asking.
			c.Cut(0, 1)
			c.Cut(2, 1)
			x.Start()
			// The pass logs what it did after its last blob is resolved,
			// which /_status may already show.
			eventually(t, converge, "node 1 has asked its peers about every unconfirmed blob", func() bool {
				return status(t, c, 1).Unconfirmed == 0 && logHas(x, "unconfirmed blobs: pass done")
			})
			assert.True(t, logHas(x, "deleted=4"), "node 1 applied the 3 deletes its peers answered and the one they forgot lately")
			assert.Equal(t, 1, logCount(x, "adopted an unconfirmed blob no peer knows"), "node 1 adopted the blob no peer knew")
			assert.Equal(t, 1, logCount(x, "whose file is newer than every state its peers know"), "node 1 adopted the blob uploaded again after its delete")
			c.HealAll()
			c.WaitConverged(t, converge)

			assert.Equal(t, node, nodeIdentity(t, c, 1), "node 1's identity after the rebuild")
			for id, data := range live {
				assertEveryReplica(t, c, id, int64(len(data)))
				s0, st0 := stateOf(t, c, hc, 0, id)
				s1, st1 := stateOf(t, c, hc, 1, id)
				if assert.Equal(t, http.StatusOK, s0) && assert.Equal(t, http.StatusOK, s1) {
					assert.Equal(t, st0, st1, "node 1's state of %s is the cluster's (its clock and node)", short(id))
				}
			}
			for _, id := range deleted {
				assertNowhere(t, c, id)
			}
			assertNowhere(t, c, forgotten)
			assertEveryReplica(t, c, unknown, int64(len(unknownData)))
			assertEveryReplica(t, c, again, int64(len(againData)))
			for i := range c.Nodes {
				res, _ := get(t, hc, c.Nodes[i].URL+"/"+forgotten)
				assert.Equal(t, http.StatusNotFound, res.StatusCode, "GET of the deleted and forgotten blob on node %d", i)
				for id, clock := range map[string]uint64{unknown: unknownClock, again: againClock} {
					_, st := stateOf(t, c, hc, i, id)
					assert.Equal(t, clock, st.Clock, "node %d: %s adopted with the clock its file records", i, short(id))
					assert.Equal(t, node, st.Node, "node %d: %s adopted as node 1's upload", i, short(id))
				}
				_, bad := wrongBlobs(c.Nodes[i])
				assert.Empty(t, bad)
			}
			assert.Empty(t, filesIn(t, filepath.Join(x.Basedir, "unconfirmed")), "node 1's unconfirmed/")
			// Adopted, not downloaded: node 1 fetched at most the files
			// uploaded while it was down.
			assert.LessOrEqual(t, fetchedBytes(t, hc, x), missed, "bytes node 1 fetched from peers")
			c.CheckNoTemp(t)
		})
	}
}

var fetchedRE = regexp.MustCompile(`(?m)^dtfc_peer_fetch_bytes_total (\S+)$`)

// fetchedBytes is node n's dtfc_peer_fetch_bytes_total.
func fetchedBytes(t *testing.T, hc *http.Client, n *cluster.Node) int64 {
	t.Helper()
	res, body := get(t, hc, n.URL+"/metrics")
	require.Equal(t, http.StatusOK, res.StatusCode)
	m := fetchedRE.FindSubmatch(body)
	require.NotNil(t, m, "no dtfc_peer_fetch_bytes_total in /metrics")
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return int64(v)
}

// TestMetaRebuildAsksAgain: a rebuilt node that cannot ask every peer
// adopts what the reachable ones know, and keeps asking about the rest
// until every peer has answered; only then is a blob no peer knows
// adopted (the oldest operation on its ID) and replicated. About 10 s.
func TestMetaRebuildAsksAgain(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := newClient(t)
	live, deleted := populate(t, hc, []string{c.Nodes[0].URL}, 12, 3)
	c.WaitConverged(t, converge)
	x := c.Nodes[1]
	x.Stop()
	unknown := plantBlob(t, x, randomBytes(3000))
	require.NoError(t, cluster.DamageMeta(metaPath(x), cluster.MetaRemoved))
	x.RebuildMeta()

	c.Nodes[2].Stop()
	x.Start()
	eventually(t, converge, "node 1 adopts what node 0 knows", func() bool {
		return status(t, c, 1).Blobs == int64(len(live))
	})
	eventually(t, converge, "node 1 says it will ask again", func() bool { return logHas(x, "will ask again") })
	st := status(t, c, 1)
	assert.EqualValues(t, 1, st.Unconfirmed)
	require.NotNil(t, st.Cluster)
	assert.EqualValues(t, 1, st.Cluster.UnconfirmedPending, "/_status counts the blob it will ask about again")
	assert.False(t, logHas(x, "adopted an unconfirmed blob"), "adopted while a peer could not be asked")

	c.Nodes[2].Start()
	eventually(t, converge, "node 1 asks node 2 once it is back", func() bool { return logHas(x, "adopted an unconfirmed blob") })
	c.WaitConverged(t, converge)
	st = status(t, c, 1)
	assert.EqualValues(t, 0, st.Unconfirmed)
	assert.EqualValues(t, 0, st.Cluster.UnconfirmedPending)
	for id, data := range live {
		assertEveryReplica(t, c, id, int64(len(data)))
	}
	for _, id := range deleted {
		assertNowhere(t, c, id)
	}
	assertEveryReplica(t, c, unknown, 3000)
}

// TestMetaMissingEmptyStore: a node whose meta.db is gone but whose
// blobs/ is empty (every file deleted) starts a fresh store under its old
// identity, saying so in its log.
func TestMetaMissingEmptyStore(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 1})
	hc := newClient(t)
	n := c.Nodes[0]
	populate(t, hc, []string{n.URL}, 3, 3)
	node := nodeIdentity(t, c, 0)
	n.Stop()
	require.Empty(t, c.BlobFiles(0))
	require.NoError(t, cluster.DamageMeta(metaPath(n), cluster.MetaRemoved))
	n.Start()
	assert.Equal(t, node, nodeIdentity(t, c, 0), "the node's identity")
	assert.True(t, logHas(n, "starting a fresh store under the same identity"), "the log warns")
	_, id := upload(t, hc, n.URL, "after.bin", randomBytes(500))
	res, _ := get(t, hc, n.URL+"/"+id)
	assert.Equal(t, http.StatusOK, res.StatusCode)
}

// TestMetaRebuiltLearnsBlocksFirst: a node whose metadata was rebuilt
// has lost its deny list. Until it has compared it with a peer's it
// refuses uploads (503 with Retry-After and a JSON message, nothing
// stored) rather than take blocked bytes, acknowledge them, and lose
// them to the block it learns next: the long soak (seed 20261203) lost an
// upload so. Once it has, a blocked ID answers 451 and other uploads are
// taken. About 10 s.
func TestMetaRebuiltLearnsBlocksFirst(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := newClient(t)
	blocked := randomBytes(2000)
	_, bID := upload(t, hc, c.Nodes[0].URL, "b", blocked)
	setDeny(t, hc, c.Nodes[0].URL, bID, `{"status": 451, "reason": "test"}`)
	populate(t, hc, []string{c.Nodes[0].URL}, 5, 1)
	c.WaitConverged(t, converge)

	x := c.Nodes[1]
	x.Stop()
	require.NoError(t, cluster.DamageMeta(metaPath(x), cluster.MetaRemoved))
	x.RebuildMeta()
	c.Cut(1, 0)
	c.Cut(1, 2)
	x.Start()
	for _, data := range [][]byte{blocked, randomBytes(3000)} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, x.URL+"/f.bin", bytes.NewReader(data))
		require.NoError(t, err)
		res, body := do(t, hc, req)
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "an upload before node 1 knows its peers' blocks: %s", body)
		assert.Equal(t, "5", res.Header.Get("Retry-After"))
		assert.Contains(t, string(body), `"error":`)
		assert.Contains(t, string(body), "rebuilt")
	}
	assert.Empty(t, filesIn(t, filepath.Join(x.Basedir, "tmp")), "node 1's tmp/")

	c.HealAll()
	var status int
	eventually(t, converge, "node 1 takes uploads again", func() bool {
		status, _, _ = tryUpload(t.Context(), hc, x.URL, "after.bin", []byte("taken once the blocks are known"))
		return status == http.StatusCreated
	})
	// Logged just after the store takes uploads again.
	eventually(t, 10*time.Second, "node 1 says it learned the blocks", func() bool { return logHas(x, "learned the blocks the peers hold") })
	status, _, err := tryUpload(t.Context(), hc, x.URL, "b", blocked)
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnavailableForLegalReasons, status, "the blocked bytes, on node 1")
}
