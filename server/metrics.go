package server

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	handler   http.Handler
	requests  *prometheus.HistogramVec
	bytesIn   prometheus.Counter
	bytesOut  *prometheus.CounterVec
	uploads   *prometheus.CounterVec
	inFlight  prometheus.Gauge
	outLocal  prometheus.Counter
	outRemote prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, s *Server) *metrics {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dtfc_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests, by route pattern, method and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route", "method", "code"}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dtfc_upload_bytes_total",
			Help: "Bytes received in client uploads.",
		}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_download_bytes_total",
			Help: "Bytes sent to clients in blob downloads, by source (local or peer).",
		}, []string{"source"}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dtfc_uploads_total",
			Help: "Client uploads by result: created (new blob), existing (already held), failed.",
		}, []string{"result"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dtfc_http_requests_in_flight",
			Help: "HTTP requests being served.",
		}),
	}
	m.outLocal = m.bytesOut.WithLabelValues("local")
	m.outRemote = m.bytesOut.WithLabelValues("peer")
	for _, r := range []string{"created", "existing", "failed"} {
		m.uploads.WithLabelValues(r)
	}
	reg.MustRegister(m.requests, m.bytesIn, m.bytesOut, m.uploads, m.inFlight,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dtfc_blobs",
			Help: "Blobs held on this node.",
		}, func() float64 { n, _ := s.stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dtfc_blob_bytes",
			Help: "Total size of the blobs held on this node (on a tier, of the bytes on its disk: not those evicted to the archive).",
		}, func() float64 { _, b := s.stats(); return float64(b) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	return m
}

// track counts the request in flight (Server.Wait), and records its
// latency by route pattern and status.
func (s *Server) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.flight.Add(1)
		defer s.flight.Done()
		s.metrics.inFlight.Inc()
		defer s.metrics.inFlight.Dec()
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := "other"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		code := sw.status
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(route, r.Method, strconv.Itoa(code)).Observe(time.Since(start).Seconds())
	})
}

// statusWriter remembers the status code. It passes ReadFrom through so
// that http.ServeContent still reaches sendfile, and Unwrap so that
// http.ResponseController reaches the connection.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64 // body bytes written
}

func (w *statusWriter) WriteHeader(code int) {
	// 1xx (the node-to-node routes' 102 Processing) precede the answer.
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(w.ResponseWriter, r)
	}
	w.n += n
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
