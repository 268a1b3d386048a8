package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// stateTimeout bounds one GET /_internal/state/{id}.
const stateTimeout = 5 * time.Second

// stateAnswer is the body of GET /_internal/state/{id}. The clock is a
// 64-bit integer, decoded as one (not through a float64).
type stateAnswer struct {
	State struct {
		Deleted bool   `json:"deleted"`
		Clock   uint64 `json:"clock"`
		Node    string `json:"node"`
	} `json:"state"`
	Held    bool `json:"held"`
	Evicted bool `json:"evicted"`
}

// readState asks node (at url) for its state of id. A transport error is
// returned as the error; any answer as a NodeState.
func (r *Runner) readState(ctx context.Context, node int, url, id string) (NodeState, error) {
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/_internal/state/"+id, nil)
	if err != nil {
		return NodeState{}, err
	}
	res, err := r.hc.Do(req)
	if err != nil {
		return NodeState{Err: errText(err)}, err
	}
	defer res.Body.Close()
	if nid := res.Header.Get("X-Dtfc-Node"); nid != "" && node >= 0 {
		r.names.Store(nid, node)
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		return NodeState{Err: errText(err)}, err
	}
	st := NodeState{Code: res.StatusCode}
	switch res.StatusCode {
	case http.StatusOK:
		var a stateAnswer
		if err := json.Unmarshal(b, &a); err != nil {
			return NodeState{Code: res.StatusCode, Err: "undecodable: " + errText(err)}, nil
		}
		st.Stamp = Stamp{Deleted: a.State.Deleted, Clock: a.State.Clock, Node: a.State.Node}
		st.Held, st.Evicted = a.Held, a.Evicted
	case http.StatusNotFound:
	default:
		st.Err = strings.TrimSpace(string(b))
		if len(st.Err) > 160 {
			st.Err = st.Err[:160] + "..."
		}
	}
	return st, nil
}

// nodeName turns a node identity into "node i" once some answer of node
// i carried it (X-Dtfc-Node), else its first characters.
func (r *Runner) nodeName(id string) string {
	if v, ok := r.names.Load(id); ok {
		return fmt.Sprintf("node %d", v.(int))
	}
	return shortNode(id)
}

// showStamp describes a stamp with the node's name.
func (r *Runner) showStamp(s Stamp) string {
	return strings.Replace(s.String(), shortNode(s.Node), r.nodeName(s.Node), 1)
}

// fetchStates asks every node for its state of every ID of the ledger,
// a few requests at a time: states[id][node].
func (r *Runner) fetchStates(entries map[string]Entry) map[string][]NodeState {
	nodes := r.c.Nodes
	out := make(map[string][]NodeState, len(entries))
	for id := range entries {
		out[id] = make([]NodeState, len(nodes))
	}
	type job struct {
		id   string
		node int
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				st, _ := r.readState(context.Background(), j.node, nodes[j.node].URL, j.id)
				mu.Lock()
				out[j.id][j.node] = st
				mu.Unlock()
			}
		}()
	}
	for _, id := range sortedIDs(entries) {
		for i := range nodes {
			jobs <- job{id, i}
		}
	}
	close(jobs)
	wg.Wait()
	return out
}

// fetchDeny reads every node's active deny list (GET /_deny).
func (r *Runner) fetchDeny() []DenyView {
	var out []DenyView
	for i, n := range r.c.Nodes {
		v := DenyView{Index: i, Cache: r.cache[i], Entries: map[string]int{}}
		var list struct {
			Entries []struct {
				ID     string `json:"sha512"`
				Status int    `json:"status"`
			} `json:"entries"`
		}
		v.Err = r.getJSON(n.URL+"/_deny", &list)
		for _, e := range list.Entries {
			v.Entries[e.ID] = e.Status
		}
		out = append(out, v)
	}
	return out
}

// getJSON GETs url and decodes its 200 answer into v.
func (r *Runner) getJSON(url string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := r.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", res.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, v)
}
