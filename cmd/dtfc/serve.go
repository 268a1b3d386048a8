package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/gcfloor"
	"github.com/dtfc/dtfc/internal/tlsreload"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

// serve runs a node until ctx ends (SIGINT or SIGTERM), then shuts down:
// it stops accepting, lets requests in flight finish for the shutdown
// grace, cuts off what remains (their temp files are removed), and closes
// the store cleanly.
//
// reload re-reads the configuration (file and flags) on SIGHUP, which
// swaps in its tokens (a rotation without a restart) and re-reads the peer
// list.
func serve(ctx context.Context, c Config, reload func() (Config, error), stderr io.Writer) error {
	log, recent := serveLogger(c, stderr)
	if os.Getenv("GOGC") == "" {
		defer gcfloor.Start(gcFloor, 100).Stop()
	}
	reg := prometheus.NewRegistry()
	wall := wallClock()
	store, err := openStore(c, log, wall)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing the store", "err", err)
		}
	}()
	tlsr, err := loadTLS(c, log)
	if err != nil {
		return err
	}
	proxies, err := c.proxies()
	if err != nil {
		return err
	}
	cluster, err := newCluster(c, store, tlsr, log, reg, wall)
	if err != nil {
		return err
	}
	// An archive that cannot be used refuses the start, saying which
	// and why, rather than queueing for it in silence.
	if err := cluster.CheckArchives(ctx); err != nil {
		return err
	}
	api := newAPI(c, store, cluster, proxies, recent, log, reg)
	ln, hs, err := listen(c, api, tlsr, log)
	if err != nil {
		return err
	}
	var fast *server.FastHits
	if c.FastHits && hs.TLSConfig == nil {
		fast = api.FastHits(ln, server.FastHitsOptions{ReadHeaderTimeout: hs.ReadHeaderTimeout, IdleTimeout: hs.IdleTimeout})
		ln = fast
	}
	log.Info("listening", "addr", ln.Addr().String(), "me", c.Me, "role", c.Role, "basedir", c.Basedir,
		"node", store.NodeID(), "peers", len(cluster.Peers()), "tls", tlsr != nil && tlsr.Serving())
	if c.internalHidden() {
		log.Info("node-to-node routes (/_internal) not served: a token is set without cluster_secret, and there is no peerlist", "key", c.tokenKey())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cluster.Run(gctx) })
	g.Go(func() error { return reloadOnHUP(gctx, cluster, api, reload, log) })
	g.Go(func() error {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		shutdown(hs, fast, api, time.Duration(c.ShutdownGrace), log)
		return nil
	})
	if err := g.Wait(); err != nil {
		return fmt.Errorf("serving: %w", err)
	}
	log.Info("stopped")
	return nil
}

// gcFloor is the least heap goal of a serving node whose GOGC is not set
// (internal/gcfloor): a node serving small files keeps about 1 MiB alive,
// and the runtime's own least goal (4 MiB) had it collect some 40 times a
// second under load. With this floor it served 16-18% more 1 KiB hits
// (README, Performance).
const gcFloor = 32 << 20

// serveLogger returns the node's logger, which also keeps the last
// warnings and errors for the status page and /_status (server.Recent).
func serveLogger(c Config, stderr io.Writer) (*slog.Logger, *server.Recent) {
	level := slog.LevelInfo
	if c.Verbose {
		level = slog.LevelDebug
	}
	recent := server.NewRecent(0)
	return slog.New(recent.Handler(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))), recent
}

func openStore(c Config, log *slog.Logger, wall func() time.Time) (*blobstore.Store, error) {
	return blobstore.Open(c.Basedir, blobstore.Options{
		Logger:         log.With("component", "blobstore"),
		TrackAccess:    c.Role.IsCache() || c.MaxBytes > 0,
		Tier:           !c.Role.IsCache() && c.MaxBytes > 0,
		Wall:           wall,
		MaxClockOffset: time.Duration(c.MaxClockOffset),
	})
}

// loadTLS returns the TLS files' reloader, or nil when none is configured.
func loadTLS(c Config, log *slog.Logger) (*tlsreload.Reloader, error) {
	if c.TLSCert == "" && c.TLSCA == "" && c.TLSClientCert == "" {
		return nil, nil
	}
	return tlsreload.New(tlsreload.Files{
		Cert: c.TLSCert, Key: c.TLSKey, CA: c.TLSCA,
		ClientCert: c.TLSClientCert, ClientKey: c.TLSClientKey,
	}, log.With("component", "tls"))
}

func newCluster(c Config, store *blobstore.Store, tlsr *tlsreload.Reloader, log *slog.Logger, reg *prometheus.Registry, wall func() time.Time) (*peer.Cluster, error) {
	peerClient := peer.DefaultHTTPClient(nil)
	if tlsr != nil {
		tlsr.UseFor(peerClient.Transport.(*http.Transport), nil)
	}
	return peer.New(store, peer.Options{
		Me:                  c.Me,
		Role:                c.Role,
		PeerList:            c.Peerlist,
		Join:                c.Join,
		MaxBytes:            int64(c.MaxBytes),
		Secret:              first(c.ClusterSecret),
		AcceptSecrets:       c.ClusterSecret,
		RequirePeerCert:     c.TLSRequirePeerCert,
		MaxFetches:          c.MaxPeerFetches,
		FetchSources:        c.PeerFetchSources,
		HTTPClient:          peerClient,
		AntiEntropyInterval: time.Duration(c.AntiEntropyInterval),
		ArchiveInterval:     time.Duration(c.ArchiveInterval),
		TombstoneRetention:  time.Duration(c.TombstoneRetention),
		TombstoneExpiry:     time.Duration(c.TombstoneExpiry),
		MaxClockOffset:      time.Duration(c.MaxClockOffset),
		ScrubInterval:       time.Duration(c.ScrubInterval),
		ScrubRate:           int64(c.ScrubRate),
		Logger:              log.With("component", "peer"),
		Registry:            reg,
		Wall:                wall,
	})
}

func newAPI(c Config, store *blobstore.Store, cluster *peer.Cluster, proxies []netip.Prefix, recent *server.Recent, log *slog.Logger, reg *prometheus.Registry) *server.Server {
	return server.New(server.Config{
		Me:                  c.Me,
		Role:                c.Role,
		MaxUploadBytes:      int64(c.MaxUploadBytes),
		IdleTimeout:         time.Duration(c.IdleTimeout),
		ReplicasTimeout:     time.Duration(c.ReplicasTimeout),
		AuthTokens:          c.AuthToken,
		ReadTokens:          c.ReadToken,
		PrivateStatus:       c.PrivateStatus,
		MaxUploadsPerClient: c.MaxUploadsPerClient,
		MaxHeaderBytes:      int(c.MaxHeaderBytes),
		TrustedProxies:      proxies,
		CORSOrigins:         c.CORSOrigins,
		CouchDBAuth:         c.CouchDBAuth,
		CouchDBRoles:        c.CouchDBRoles,
		Logger:              log.With("component", "http"),
		RecentErrors:        recent.Entries,
		Registry:            reg,
		Cluster:             cluster,
		NoInternal:          c.internalHidden(),
		InternalUnguarded:   !anySet(c.ClusterSecret) && c.Peerlist == "" && len(c.Join) == 0,
	}, store)
}

// listen opens the node's listener and the HTTP server that will serve it.
func listen(c Config, api *server.Server, tlsr *tlsreload.Reloader, log *slog.Logger) (net.Listener, *http.Server, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
	if err != nil {
		return nil, nil, err
	}
	// HTTP/1.1, and HTTP/2 over TLS (ALPN "h2"; no cleartext HTTP/2).
	// The limits hold on both: the server applies max_header_bytes itself
	// (net/http's own bound is only a backstop above it),
	// read_header_timeout also bounds the TLS handshake, uploads get a
	// read deadline per read on either (a stream's, over HTTP/2), and an
	// HTTP/2 connection runs at most maxStreams requests at once, where
	// HTTP/1.1 runs one.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	hs := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: time.Duration(c.ReadHeaderTimeout),
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    server.NetHTTPMaxHeaderBytes(int(c.MaxHeaderBytes)),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Protocols:         &protocols,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
		// No WriteTimeout or ReadTimeout: downloads and uploads may take
		// hours. Uploads get per-read idle deadlines instead.
	}
	if tlsr != nil && tlsr.Serving() {
		// The configuration offers "h2" (tlsreload), which is also what
		// tells hs.Serve to set HTTP/2 up for this listener.
		hs.TLSConfig = tlsr.ServerConfig()
		ln = tls.NewListener(ln, hs.TLSConfig)
	}
	return ln, hs, nil
}

// reloadOnHUP re-reads, at every SIGHUP until ctx ends, the peer list
// (like PUT /refreshpeers) and the tokens.
func reloadOnHUP(ctx context.Context, cluster *peer.Cluster, api *server.Server, reload func() (Config, error), log *slog.Logger) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			if _, err := cluster.Refresh(ctx); err != nil && !errors.Is(err, peer.ErrNoPeerList) {
				log.Error("SIGHUP: peer list not reloaded; the previous one stays in force", "err", err)
			}
			if nc, err := reload(); err != nil {
				log.Error("SIGHUP: configuration not reloaded; the tokens in force stay", "err", err)
			} else {
				api.SetTokens(nc.AuthToken, nc.ReadToken)
				log.Info("SIGHUP: tokens reloaded", "write_tokens", len(nc.AuthToken), "read_tokens", len(nc.ReadToken))
			}
		}
	}
}

// shutdown lets the requests in flight finish for grace, cuts off what
// remains, and waits for the handlers to return.
func shutdown(hs *http.Server, fast *server.FastHits, api *server.Server, grace time.Duration, log *slog.Logger) {
	log.Info("shutting down", "grace", grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	// hs.Shutdown closes fast (its listener): the hits it answers finish,
	// its idle connections close. api.Wait counts its answers in flight.
	err := hs.Shutdown(sctx)
	if err == nil && fast != nil {
		err = fast.Wait(sctx)
	}
	if err != nil {
		log.Warn("requests still running at the end of the grace period; cutting them off", "err", err)
		hs.Close()
		if fast != nil {
			fast.Cut()
		}
	}
	api.Wait()
}

// maxStreams bounds the requests one HTTP/2 connection may have in flight
// (SETTINGS_MAX_CONCURRENT_STREAMS; a stream beyond is refused). 100 is
// the least RFC 9113 recommends; max_uploads_per_client still bounds the
// uploads of one client over all its connections.
const maxStreams = 100

// scrubInterval maps the config's "0 = never" to the peer package's
// "negative disables".
// first is the first entry of l that is set ("" if none: an empty entry
// is as if unset).
func first(l StringList) string {
	for _, s := range l {
		if s != "" {
			return s
		}
	}
	return ""
}
