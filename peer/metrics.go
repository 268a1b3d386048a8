package peer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fetches          *prometheus.CounterVec
	fetchResumes     prometheus.Counter
	corruptSources   *prometheus.CounterVec
	pushResumes      prometheus.Counter
	fetchBytes       prometheus.Counter
	pushed           *prometheus.CounterVec
	pushedBytes      prometheus.Counter
	received         *prometheus.CounterVec
	repairs          *prometheus.CounterVec
	deferrals        *prometheus.CounterVec
	evictions        prometheus.Counter
	tombstonesPurged prometheus.Counter
	resyncDropped    prometheus.Counter
	scrubCorrupt     prometheus.Counter
	scrubRepaired    prometheus.Counter
	clockRefused     *prometheus.CounterVec
	clockRefusedIn   prometheus.Counter
	expired          *prometheus.GaugeVec
}

// newMetrics declares every metric of the peer layer, with its help
// text, and registers them. It is long only because it is a list: one
// declaration per metric, nothing to follow but the order.
func newMetrics(reg prometheus.Registerer, c *Cluster) *metrics {
	m := &metrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_peer_fetches_total",
			Help: "Transfers from peers on a local miss, by result: ok, corrupt (bytes did not match; aborted), failed, notfound.",
		}, []string{"result"}),
		fetchResumes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_peer_fetch_resumes_total",
			Help: "Transfers from peers that were cut and continued from where they stopped (from another holder if one could send the rest).",
		}),
		corruptSources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_peer_fetch_corrupt_sources_total",
			Help: "Peers found to have sent wrong bytes in a transfer from several holders (by comparing with a copy fetched again from one), by peer.",
		}, []string{"peer"}),
		pushResumes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_peer_push_resumes_total",
			Help: "Blobs pushed to this node that continued the bytes it kept of them from a cut transfer, instead of starting over.",
		}),
		fetchBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_peer_fetch_bytes_total",
			Help: "Bytes fetched from peers on local misses and stored.",
		}),
		pushed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_replication_pushed_total",
			Help: "Operations accepted by peers from this node's pushers, by kind (upload, delete).",
		}, []string{"kind"}),
		pushedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_replication_pushed_bytes_total",
			Help: "Blob bytes sent to peers by the pushers.",
		}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_replication_applied_total",
			Help: "Operations pushed by peers that changed this node's state, by kind.",
		}, []string{"kind"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_antientropy_repairs_total",
			Help: "States pulled by anti-entropy because a peer had a newer one, by kind.",
		}, []string{"kind"}),
		deferrals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_antientropy_deferred_total",
			Help: "Anti-entropy comparisons with a peer deferred because the peer was catching this node up by pushes, by peer.",
		}, []string{"peer"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_cache_evictions_total",
			Help: "Blobs a cache (or a tier: their bytes only) evicted to stay under its size limit.",
		}),
		tombstonesPurged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_tombstones_expired_total",
			Help: "Tombstones forgotten after the retention.",
		}),
		resyncDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_resync_dropped_total",
			Help: "Files dropped by a resync because the cluster deleted them while this node was away.",
		}),
		scrubCorrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_scrub_corrupt_total",
			Help: "Blobs the scrubber found corrupt (quarantined).",
		}),
		scrubRepaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_scrub_repaired_total",
			Help: "Corrupt blobs fetched again from a peer.",
		}),
		clockRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_replication_clock_refused_total",
			Help: "Changes a peer refused because their clock was more than its max_clock_offset ahead of its wall clock, by peer.",
		}, []string{"peer"}),
		clockRefusedIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_clock_refused_total",
			Help: "States and deny entries from peers this node refused because their clock was more than max_clock_offset ahead of its wall clock.",
		}),
		expired: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dtfc_peer_expired",
			Help: "1 if this node marked the peer expired (it forgot deletes the peer never acknowledged; the peer must resync).",
		}, []string{"peer"}),
	}
	for _, r := range []string{"ok", "corrupt", "failed", "notfound"} {
		m.fetches.WithLabelValues(r)
	}
	for _, k := range []string{"upload", "delete"} {
		m.pushed.WithLabelValues(k)
		m.received.WithLabelValues(k)
		m.repairs.WithLabelValues(k)
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.fetches, m.fetchResumes, m.corruptSources, m.pushResumes, m.fetchBytes, m.pushed, m.pushedBytes, m.received, m.repairs, m.deferrals,
		m.evictions, m.tombstonesPurged, m.resyncDropped, m.scrubCorrupt, m.scrubRepaired,
		m.clockRefused, m.clockRefusedIn, m.expired,
		&queueCollector{c: c},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dtfc_scrub_checked_blobs",
			Help: "Blobs checked by the current or last scrub pass.",
		}, func() float64 { return float64(c.store.ScrubProgress().Checked) }),
	)
	return m
}

// queueCollector reports each peer's replication queue when scraped.
type queueCollector struct{ c *Cluster }

var (
	queueDesc = prometheus.NewDesc("dtfc_replication_queue_length",
		"Operations not yet accepted by the peer.", []string{"peer"}, nil)
	lagDesc = prometheus.NewDesc("dtfc_replication_lag_seconds",
		"How long replication to the peer has been behind (0 when caught up).", []string{"peer"}, nil)
	upDesc = prometheus.NewDesc("dtfc_peer_up",
		"1 if the last exchange with the peer succeeded.", []string{"peer"}, nil)
	archiveWrittenDesc = prometheus.NewDesc("dtfc_archive_bytes_written_total",
		"Blob bytes the archive accepted from this node (whole blobs and parts), by archive.", []string{"archive"}, nil)
	archiveReadDesc = prometheus.NewDesc("dtfc_archive_bytes_read_total",
		"Blob bytes this node read from the archive (misses and the relay), by archive.", []string{"archive"}, nil)
	archiveErrorsDesc = prometheus.NewDesc("dtfc_archive_errors_total",
		"Requests to the archive that failed (not counting \"not found\" and \"already there\", which are answers), by archive.", []string{"archive"}, nil)
)

func (q *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueDesc
	ch <- lagDesc
	ch <- upDesc
	ch <- archiveWrittenDesc
	ch <- archiveReadDesc
	ch <- archiveErrorsDesc
}

func (q *queueCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range q.c.mem.Load().remotes {
		n, lag := q.c.queue(r)
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(n), r.URL)
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, lag.Seconds(), r.URL)
		up := 0.0
		if r.status().Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, r.URL)
		if r.Peer.IsArchive() {
			cnt := q.c.stats(r.URL)
			ch <- prometheus.MustNewConstMetric(archiveWrittenDesc, prometheus.CounterValue, float64(cnt.bytes.Written()), r.URL)
			ch <- prometheus.MustNewConstMetric(archiveReadDesc, prometheus.CounterValue, float64(cnt.bytes.Read()), r.URL)
			ch <- prometheus.MustNewConstMetric(archiveErrorsDesc, prometheus.CounterValue, float64(cnt.errors.Load()), r.URL)
		}
	}
}

// setExpired sets dtfc_peer_expired for the current peers.
func (m *metrics) setExpired(remotes []*remote) {
	m.expired.Reset()
	for _, r := range remotes {
		v := 0.0
		if r.isExpired() {
			v = 1
		}
		m.expired.WithLabelValues(r.URL).Set(v)
	}
}
