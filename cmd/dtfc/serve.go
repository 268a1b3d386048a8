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
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc/blobstore"
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
	level := slog.LevelInfo
	if c.Verbose {
		level = slog.LevelDebug
	}
	// The last warnings and errors are kept for the status page and
	// /_status (server.Recent).
	recent := server.NewRecent(0)
	log := slog.New(recent.Handler(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))

	reg := prometheus.NewRegistry()
	wall := wallClock()
	store, err := blobstore.Open(c.Basedir, blobstore.Options{
		Logger:         log.With("component", "blobstore"),
		TrackAccess:    c.Role == "cache",
		Wall:           wall,
		MaxClockOffset: time.Duration(c.MaxClockOffset),
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing the store", "err", err)
		}
	}()

	var tlsr *tlsreload.Reloader
	if c.TLSCert != "" || c.TLSCA != "" || c.TLSClientCert != "" {
		tlsr, err = tlsreload.New(tlsreload.Files{
			Cert: c.TLSCert, Key: c.TLSKey, CA: c.TLSCA,
			ClientCert: c.TLSClientCert, ClientKey: c.TLSClientKey,
		}, log.With("component", "tls"))
		if err != nil {
			return err
		}
	}
	peerClient := peer.DefaultHTTPClient(nil)
	if tlsr != nil {
		peerClient.Transport.(*http.Transport).TLSClientConfig = tlsr.ClientConfig()
	}
	proxies, err := c.proxies()
	if err != nil {
		return err
	}

	cluster, err := peer.New(store, peer.Options{
		Me:                  c.Me,
		Role:                c.Role,
		PeerList:            c.Peerlist,
		MaxBytes:            int64(c.MaxBytes),
		Secret:              first(c.ClusterSecret),
		AcceptSecrets:       c.ClusterSecret,
		RequirePeerCert:     c.TLSRequirePeerCert,
		MaxFetches:          c.MaxPeerFetches,
		HTTPClient:          peerClient,
		AntiEntropyInterval: time.Duration(c.AntiEntropyInterval),
		TombstoneRetention:  time.Duration(c.TombstoneRetention),
		TombstoneExpiry:     time.Duration(c.TombstoneExpiry),
		MaxClockOffset:      time.Duration(c.MaxClockOffset),
		ScrubInterval:       time.Duration(c.ScrubInterval),
		ScrubRate:           int64(c.ScrubRate),
		Logger:              log.With("component", "peer"),
		Registry:            reg,
		Wall:                wall,
	})
	if err != nil {
		return err
	}

	api := server.New(server.Config{
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
		Logger:              log.With("component", "http"),
		RecentErrors:        recent.Entries,
		Registry:            reg,
		Cluster:             cluster,
		NoInternal:          c.internalHidden(),
	}, store)

	ln, err := net.Listen("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
	if err != nil {
		return err
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
	log.Info("listening", "addr", ln.Addr().String(), "me", c.Me, "role", c.Role, "basedir", c.Basedir,
		"node", store.NodeID(), "peers", len(cluster.Peers()), "tls", tlsr != nil && tlsr.Serving())
	if c.internalHidden() {
		log.Info("node-to-node routes (/_internal) not served: a token is set without cluster_secret, and there is no peerlist", "key", c.tokenKey())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cluster.Run(gctx) })
	g.Go(func() error {
		// SIGHUP re-reads the peer list, like PUT /refreshpeers, and the
		// tokens.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
				if _, err := cluster.Refresh(); err != nil && !errors.Is(err, peer.ErrNoPeerList) {
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
	})
	g.Go(func() error {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "grace", time.Duration(c.ShutdownGrace).String())
		sctx, cancel := context.WithTimeout(context.Background(), time.Duration(c.ShutdownGrace))
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			log.Warn("requests still running at the end of the grace period; cutting them off", "err", err)
			hs.Close()
		}
		api.Wait()
		return nil
	})
	if err := g.Wait(); err != nil {
		return fmt.Errorf("serving: %w", err)
	}
	log.Info("stopped")
	return nil
}

// maxStreams bounds the requests one HTTP/2 connection may have in flight
// (SETTINGS_MAX_CONCURRENT_STREAMS; a stream beyond is refused). 100 is
// the least RFC 9113 recommends; max_uploads_per_client still bounds the
// uploads of one client over all its connections.
const maxStreams = 100

// scrubInterval maps the config's "0 = never" to the peer package's
// "negative disables".
func first(l StringList) string {
	if len(l) == 0 {
		return ""
	}
	return l[0]
}
