package server

import (
	"cmp"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/defaults"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/peer"
)

// Blobs is the local store as the server uses it.
type Blobs interface {
	Open(id dtfc.ID) (*blobstore.Blob, error)
	ReadOrOpen(id dtfc.ID, limit int64) (dtfc.State, []byte, *blobstore.Blob, error)
	Stat(id dtfc.ID) (dtfc.State, error)
	NewWriter(opts blobstore.WriterOptions) (*blobstore.Writer, error)
	Delete(id dtfc.ID, force bool) (dtfc.State, error)
	DeleteUnmodifiedSince(id dtfc.ID, since time.Time) (dtfc.State, error)
	// SeenRemote is told of a peer's state of id acted on without taking
	// it, so that the change made next is dated after it.
	SeenRemote(id dtfc.ID, c dtfc.Timestamp)
	// DenyKnown is false while the store takes no upload: its metadata
	// was rebuilt and it has not yet learned its peers' blocks.
	DenyKnown() bool
}

// Config configures a Server. The zero value serves a single replica node
// with no limits and no authentication.
type Config struct {
	// Me is the URL under which clients reach this node, used in Location
	// headers. If empty, Location is a path ("/<id>").
	Me string
	// Role is "replica" or "cache", reported in /_status. If empty, it
	// defaults to "replica".
	Role dtfc.Role
	// MaxUploadBytes answers 413 to larger uploads. If zero, there is no
	// limit.
	MaxUploadBytes int64
	// IdleTimeout answers 408 to an upload body that sends nothing for this
	// long. If zero, it defaults to 60 seconds; negative disables it.
	IdleTimeout time.Duration
	// ReplicasTimeout bounds how long ?replicas=N waits before 504. If
	// zero, it defaults to 30 seconds.
	ReplicasTimeout time.Duration
	// AuthTokens, if any, are the tokens that authorise writes
	// (Authorization: Bearer <token>); several may be valid at once so a
	// token can be rotated. If empty, writes are open.
	AuthTokens []string
	// ReadTokens, if any, are needed to read blobs (a write token reads
	// too). If empty, reads are open.
	ReadTokens []string
	// PrivateStatus requires a read or write token for /, /_status and
	// /metrics. /health stays open.
	PrivateStatus bool
	// MaxUploadsPerClient answers 429 to a client address with more
	// uploads in flight. If zero, it defaults to 64; negative: no limit.
	MaxUploadsPerClient int
	// MaxHeaderBytes, if positive, answers 431 to a request whose head is
	// larger: its request line and header fields as HTTP/1.1 writes them
	// ("Name: value\r\n"), the Host field included, measured the same way
	// over HTTP/2 so that one limit means the same on both. The
	// http.Server's own MaxHeaderBytes must leave room above it: see
	// NetHTTPMaxHeaderBytes.
	MaxHeaderBytes int
	// TrustedProxies are the addresses of reverse proxies whose
	// X-Forwarded-For names the client (for MaxUploadsPerClient and logs).
	TrustedProxies []netip.Prefix
	// CORSOrigins are the origins whose browser pages may read and
	// upload ("*": any). If empty, no CORS headers are sent.
	CORSOrigins []string
	// CouchDBAuth, if set, is the URL of a CouchDB whose sessions
	// authorize writers (see couchauth.go); CouchDBRoles, if any, are the
	// roles one of which such a writer needs.
	CouchDBAuth  string
	CouchDBRoles []string
	// Logger receives the server's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// RecentErrors, if set, returns the node's latest warnings and errors,
	// newest first, for the status page and /_status (Recent.Entries). If
	// nil, none are shown.
	RecentErrors func() []LogEntry
	// Registry receives the server's metrics. If nil, a private registry is
	// created; /metrics serves it either way.
	Registry *prometheus.Registry
	// Cluster connects the node to its peers. If nil, the node is alone.
	Cluster Cluster
	// NoInternal, if set, does not serve the node-to-node routes under
	// /_internal at all, even with a Cluster (they answer 404 like any
	// unknown route). For a node alone whose writes need a token but
	// that has no cluster secret: those routes take states and blobs
	// without any token.
	NoInternal bool
	// InternalUnguarded says the node-to-node routes have no guard of
	// their own: no cluster secret, and no peer list or join (nothing
	// outside needs them). Then they are not served (404) while a write
	// or read token is set, tokens set by SetTokens (a SIGHUP) included:
	// decided once at the start, they stayed open, without token or
	// secret, after a reload added tokens
	// (TestTokensSetBySIGHUPHideInternal).
	InternalUnguarded bool
}

// Server is dtfc's HTTP API over a local store and, optionally, a cluster.
type Server struct {
	cfg     Config
	store   Blobs
	stats   func() (blobs, bytes int64)
	log     *slog.Logger
	router  chi.Router
	metrics *metrics
	started time.Time
	flight  sync.WaitGroup
	tokens  atomic.Pointer[tokens]
	uploads *clientLimiter
	denier  Denier
	couch   *couchAuth // nil without Config.CouchDBAuth
	ff      *prober    // GET /{id}/ffmetadata (ffmetadata.go)
}

// Stats is implemented by a store that counts what it holds.
type Stats interface {
	Stats() (blobs, bytes int64)
}

// New returns a Server over store. It starts nothing.
func New(cfg Config, store Blobs) *Server {
	if cfg.Role == "" {
		cfg.Role = dtfc.RoleReplica
	}
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, defaults.IdleTimeout)
	cfg.ReplicasTimeout = cmp.Or(cfg.ReplicasTimeout, defaults.ReplicasTimeout)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.Me = strings.TrimRight(cfg.Me, "/")
	cfg.MaxUploadsPerClient = cmp.Or(cfg.MaxUploadsPerClient, defaults.MaxUploadsPerClient)
	s := &Server{cfg: cfg, store: store, log: cfg.Logger, started: time.Now()}
	s.SetTokens(cfg.AuthTokens, cfg.ReadTokens)
	s.uploads = &clientLimiter{max: cfg.MaxUploadsPerClient, n: map[string]int{}}
	s.denier, _ = store.(Denier)
	s.stats = func() (int64, int64) { return 0, 0 }
	if st, ok := store.(Stats); ok {
		s.stats = st.Stats
	}
	s.metrics = newMetrics(cfg.Registry, s)
	s.couch = newCouchAuth(cfg.CouchDBAuth, cfg.CouchDBRoles)
	s.ff = newProber()
	s.router = s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil && r.Body != http.NoBody && strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		// Put back before net/http finishes the request: it knows its
		// own body type (and then neither sends the 100 nor reads a body
		// it did not ask for).
		orig := r.Body
		r.Body = &continueBody{ReadCloser: orig}
		defer func() { r.Body = orig }()
	}
	s.router.ServeHTTP(w, r)
}

// continueBody is the body of a request sent with "Expect: 100-continue":
// net/http answers "100 Continue" at its first read. An error answered
// before that (drainBody) must not read it: the client would be told to
// send a body only to have it thrown away, and would see the refusal
// only after sending it (or after drainTime).
type continueBody struct {
	io.ReadCloser
	read atomic.Bool
}

func (b *continueBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.ReadCloser.Read(p)
}

// Wait blocks until every request that has entered the server has
// returned. Call it after http.Server.Shutdown (or Close) and before
// closing the store, so no handler is left writing to a closed store.
func (s *Server) Wait() { s.flight.Wait() }

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.track)
	r.Use(s.cors)
	if s.cfg.MaxHeaderBytes > 0 {
		r.Use(s.limitHeader)
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, httpstatus.Errorf(http.StatusNotFound, "no such route: %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, httpstatus.Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
	})
	getHead := func(r chi.Router, pattern string, h http.HandlerFunc) {
		r.Get(pattern, h)
		r.Head(pattern, h)
	}
	getHead(r, "/health", s.health)
	getHead(r, "/health.html", s.health)
	// Other methods on the routes that take PUT only: 405, where the
	// routes of /{id} would take them for a malformed ID (400).
	for _, p := range []string{"/refreshpeers", "/refreshpeers.html"} {
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete} {
			r.Method(m, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Allow", http.MethodPut)
				s.writeError(w, r, httpstatus.Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s (PUT)", r.Method, r.URL.Path))
			}))
		}
	}
	r.Group(func(r chi.Router) {
		r.Use(s.requireStatus)
		getHead(r, "/_status", s.status)
		getHead(r, "/metrics", s.metrics.handler.ServeHTTP)
		getHead(r, "/", s.index)
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireOperator)
		r.Put("/refreshpeers", s.refreshPeers)
		r.Put("/refreshpeers.html", s.refreshPeers)
		r.Get("/_blobs", s.listBlobs)
		if s.cfg.Cluster != nil {
			r.Get("/_members", s.listMembers)
			r.Put("/_members", s.addMember)
			r.Delete("/_members", s.removeMember)
		}
		if s.denier != nil {
			r.Get("/_deny", s.listDeny)
			r.Put("/_deny/{id}", s.putDeny)
			r.Delete("/_deny/{id}", s.liftDeny)
		}
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireWrite, s.notRemoved)
		r.Delete("/{id}", s.delete)
		r.Group(func(r chi.Router) {
			r.Use(s.limitUploads)
			r.Post("/", s.upload)
			r.Put("/{filename}", s.upload)
		})
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireRead)
		getHead(r, "/{id}", s.download)
		getHead(r, "/{id}/nopeerload", s.download)
		r.Get("/{id}/ffmetadata", s.ffmetadata)
	})
	if c := s.cfg.Cluster; c != nil && !s.cfg.NoInternal {
		internal := c.InternalHandler()
		r.Mount(peer.InternalPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.cfg.InternalUnguarded && s.tokensSet() {
				s.writeError(w, r, httpstatus.Errorf(http.StatusNotFound, "not found"))
				return
			}
			internal.ServeHTTP(w, r)
		}))
	}
	return r
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte("ok\n"))
}
