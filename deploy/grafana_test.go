package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// grafanaDashboard is the parsed deploy/grafana-dashboard.json, as far as
// these tests read it.
type grafanaDashboard struct {
	SchemaVersion int              `json:"schemaVersion"`
	Title         string           `json:"title"`
	UID           string           `json:"uid"`
	Panels        []grafanaPanel   `json:"panels"`
	Templating    grafanaTemplates `json:"templating"`
}

type grafanaPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource *grafanaDS      `json:"datasource"`
	GridPos    *struct{}       `json:"gridPos"`
	Targets    []grafanaTarget `json:"targets"`
	Panels     []grafanaPanel  `json:"panels"` // a row's, when collapsed
}

type grafanaTarget struct {
	RefID      string     `json:"refId"`
	Expr       string     `json:"expr"`
	Datasource *grafanaDS `json:"datasource"`
}

type grafanaDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaTemplates struct {
	List []struct {
		Name       string          `json:"name"`
		Type       string          `json:"type"`
		Query      json.RawMessage `json:"query"`
		Definition string          `json:"definition"`
		Datasource *grafanaDS      `json:"datasource"`
	} `json:"list"`
}

// dashboardDS is the data source every panel and query must name: the
// dashboard's "datasource" variable, so one import works with any
// Prometheus.
const dashboardDS = "${datasource}"

func readDashboard(t *testing.T) (grafanaDashboard, string) {
	t.Helper()
	text := readRepoFile(t, "deploy", "grafana-dashboard.json")
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(text))
	require.NoError(t, dec.Decode(&d), "deploy/grafana-dashboard.json is not JSON")
	return d, text
}

// allPanels returns the panels, those inside rows included.
func allPanels(ps []grafanaPanel) []grafanaPanel {
	var out []grafanaPanel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardQueries returns every PromQL expression of the dashboard,
// each with where it is: every "expr" anywhere in the JSON (panel targets,
// whatever the nesting) and the templating variables' queries.
func dashboardQueries(t *testing.T, text string, d grafanaDashboard) map[string]string {
	t.Helper()
	var tree any
	require.NoError(t, json.Unmarshal([]byte(text), &tree))
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if s, ok := c.(string); ok && k == "expr" {
					out[s] = path
				}
				walk(path+"."+k, c)
			}
		case []any:
			for i, c := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		}
	}
	walk("", tree)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		where := "templating " + v.Name
		var q struct {
			Query string `json:"query"`
		}
		var s string
		switch {
		case json.Unmarshal(v.Query, &s) == nil:
		case json.Unmarshal(v.Query, &q) == nil:
			s = q.Query
		}
		require.NotEmpty(t, s, "%s has no query", where)
		out[s] = where
		if v.Definition != "" {
			out[v.Definition] = where
		}
	}
	return out
}

var (
	promString = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promIdent  = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// metricNames returns the metric names a PromQL expression reads: its
// identifiers outside strings that belong to dtfc's families (dtfc_) or
// to the Go and process collectors it registers (go_, process_).
func metricNames(expr string) []string {
	expr = promString.ReplaceAllString(expr, `""`)
	var out []string
	for _, id := range promIdent.FindAllString(expr, -1) {
		if strings.HasPrefix(id, "dtfc_") || strings.HasPrefix(id, "go_") || strings.HasPrefix(id, "process_") {
			out = append(out, id)
		}
	}
	return out
}

// exposed returns the names a /metrics answer exposes: every sample's
// name (a histogram X exposes X_bucket, X_sum and X_count) and every
// family's name from its TYPE line.
func exposed(t *testing.T, body []byte) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names[strings.Fields(f)[0]] = true
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		require.Positive(t, end, "a sample line: %q", line)
		names[line[:end]] = true
	}
	require.NoError(t, sc.Err())
	return names
}

// TestGrafanaDashboardShape: the dashboard parses, has the data source
// and instance variables, and every panel has a title and a data source
// (a row only a title); every query names the data source variable and is
// filtered by $instance.
func TestGrafanaDashboardShape(t *testing.T) {
	d, text := readDashboard(t)
	assert.GreaterOrEqual(t, d.SchemaVersion, 36, "schemaVersion")
	assert.NotEmpty(t, d.Title)
	assert.NotEmpty(t, d.UID)

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" {
			require.NotNil(t, v.Datasource, "variable %s has no data source", v.Name)
			assert.Equal(t, dashboardDS, v.Datasource.UID, "variable %s", v.Name)
		}
	}
	assert.Equal(t, "datasource", vars["datasource"], "a datasource variable")
	assert.Equal(t, "query", vars["instance"], "an instance variable")
	var ds struct {
		Query string `json:"query"`
	}
	for _, v := range d.Templating.List {
		if v.Name == "datasource" {
			require.NoError(t, json.Unmarshal(v.Query, &ds.Query))
		}
	}
	assert.Equal(t, "prometheus", ds.Query, "the datasource variable lists Prometheus data sources")

	panels := allPanels(d.Panels)
	require.NotEmpty(t, panels)
	ids := map[int]string{}
	graphs := 0
	for _, p := range panels {
		where := fmt.Sprintf("panel %d (%q)", p.ID, p.Title)
		assert.NotEmpty(t, strings.TrimSpace(p.Title), "%s has no title", where)
		assert.NotNil(t, p.GridPos, "%s has no gridPos", where)
		if other, dup := ids[p.ID]; dup {
			t.Errorf("%s: id %d also used by %q", where, p.ID, other)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		graphs++
		if assert.NotNil(t, p.Datasource, "%s has no datasource", where) {
			assert.Equal(t, "prometheus", p.Datasource.Type, where)
			assert.Equal(t, dashboardDS, p.Datasource.UID, where)
		}
		assert.NotEmpty(t, p.Targets, "%s has no query", where)
		for _, tg := range p.Targets {
			assert.NotEmpty(t, tg.RefID, where)
			assert.NotEmpty(t, strings.TrimSpace(tg.Expr), "%s: target %s has no expr", where, tg.RefID)
			if assert.NotNil(t, tg.Datasource, "%s: target %s has no datasource", where, tg.RefID) {
				assert.Equal(t, dashboardDS, tg.Datasource.UID, where)
			}
			assert.Contains(t, tg.Expr, `instance=~"$instance"`, "%s: target %s is not filtered by the instance variable", where, tg.RefID)
		}
	}
	assert.GreaterOrEqual(t, graphs, 20, "panels for the documented metrics")
	for expr := range dashboardQueries(t, text, d) {
		assert.NotEmpty(t, metricNames(expr), "query %q reads no dtfc metric", expr)
	}
}

// TestGrafanaDashboardMetricsExist: every metric a dashboard query reads
// is one that real dtfc nodes export. Two nodes run (so the per-peer
// series exist), one upload and one read (request and byte series), and a
// node whose clock runs an hour ahead has a change refused by its peer
// (the clock-refusal series, created by the first refusal); then both
// nodes' /metrics are scraped.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	d, text := readDashboard(t)
	queries := dashboardQueries(t, text, d)
	want := map[string][]string{} // metric -> where
	for expr, where := range queries {
		for _, m := range metricNames(expr) {
			want[m] = append(want[m], where)
		}
	}
	require.NotEmpty(t, want)

	// Both nodes list an archive (versitygw), for the archive series;
	// without versitygw those are left unchecked, saying so.
	opts := cluster.Options{Nodes: 2, Direct: true}
	archives := false
	if bin, missing := versitygw.Binary(); bin != "" {
		s := versitygw.ForTest(t)
		entry := s.PeerEntry("dash", versitygw.SecretFile(t))
		opts.ExtraPeers = func(int) string { return entry }
		archives = true
	} else {
		t.Logf("the dtfc_archive_* series are not checked: %s", missing)
	}
	c := cluster.Start(t, opts)
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	id := putBlob(t, hc, n0.URL, "hello.txt", []byte("hello, dashboard\n"))
	r := httpDo(t, hc, http.MethodGet, n1.URL+"/"+id, nil)
	require.Equal(t, http.StatusOK, r.status, "GET from node 1: %s", r)

	// A change made with a clock an hour ahead is refused by the peer
	// (max_clock_offset defaults to a minute). The node re-reads its
	// clock file now and then: uploads go on until one is dated ahead
	// and refused.
	n0.SetClock(time.Hour)
	refused := func(node *cluster.Node, metric string) bool {
		for _, line := range strings.Split(string(scrape(t, hc, node.URL)), "\n") {
			if strings.HasPrefix(line, metric) && !strings.HasSuffix(line, " 0") {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; !refused(n0, "dtfc_replication_clock_refused_total{") || !refused(n1, "dtfc_clock_refused_total "); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no clock refusal counted within 60s; node 0:\n%s\nnode 1:\n%s", n0.Log(), n1.Log())
		}
		putBlob(t, hc, n0.URL, "ahead.txt", fmt.Appendf(nil, "written an hour ahead, %d\n", i))
		time.Sleep(100 * time.Millisecond)
	}
	n0.SetClock(0)

	have := exposed(t, scrape(t, hc, n0.URL))
	for name := range exposed(t, scrape(t, hc, n1.URL)) {
		have[name] = true
	}
	var missing []string
	for m, where := range want {
		if !have[m] && (archives || !strings.HasPrefix(m, "dtfc_archive_")) {
			sort.Strings(where)
			missing = append(missing, fmt.Sprintf("%s (in %s)", m, strings.Join(slices.Compact(where), ", ")))
		}
	}
	sort.Strings(missing)
	assert.Empty(t, missing, "the dashboard reads metrics dtfc does not export")
	t.Logf("%d metrics read by %d queries, all exported", len(want), len(queries))
}

// TestGrafanaMetricNames: the extraction of metric names from PromQL.
func TestGrafanaMetricNames(t *testing.T) {
	for _, tt := range []struct {
		expr string
		want []string
	}{
		{`sum(dtfc_blobs{instance=~"$instance"})`, []string{"dtfc_blobs"}},
		{`histogram_quantile(0.99, sum by (le) (rate(dtfc_http_request_duration_seconds_bucket{route="/dtfc_not_a_metric"}[$__rate_interval])))`,
			[]string{"dtfc_http_request_duration_seconds_bucket"}},
		{`label_values(dtfc_blobs, instance)`, []string{"dtfc_blobs"}},
		{`rate(process_cpu_seconds_total[5m]) + go_goroutines`, []string{"process_cpu_seconds_total", "go_goroutines"}},
		{`count(up == 0)`, nil},
	} {
		assert.Equal(t, tt.want, metricNames(tt.expr), tt.expr)
	}
}

func scrape(t *testing.T, hc *http.Client, base string) []byte {
	t.Helper()
	res, err := hc.Get(base + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, "GET %s/metrics: %s", base, b)
	return b
}
