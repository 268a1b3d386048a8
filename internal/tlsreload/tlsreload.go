// Package tlsreload builds TLS configurations from certificate files that
// are re-read when they change (checked at most once a second, on use), so
// renewed certificates are picked up without a restart. A file that fails
// to load is reported and the previous certificate stays in use.
package tlsreload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Files names the PEM files of a node's TLS setup. Empty names are unused.
type Files struct {
	// Cert and Key are the node's server certificate and key (HTTPS).
	Cert, Key string
	// CA is a bundle of CA certificates that verify peers' server
	// certificates and, with mutual TLS, their client certificates. If
	// empty, the system roots verify peers and client certificates are
	// not verified.
	CA string
	// ClientCert and ClientKey are presented to peers (mutual TLS).
	ClientCert, ClientKey string
}

// checkEvery bounds how often the files' modification times are checked.
const checkEvery = time.Second

// Reloader holds the current certificates.
type Reloader struct {
	files Files
	log   *slog.Logger

	mu         sync.Mutex
	checked    time.Time
	stamps     map[string]stamp
	cert       *tls.Certificate
	clientCert *tls.Certificate
	pool       *x509.CertPool
}

type stamp struct {
	mod  time.Time
	size int64
}

// New loads the files once; an error here is fatal (a node must not start
// with a broken TLS setup). log may be nil.
func New(f Files, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("tls_cert and tls_key go together")
	}
	if (f.ClientCert == "") != (f.ClientKey == "") {
		return nil, errors.New("tls_client_cert and tls_client_key go together")
	}
	r := &Reloader{files: f, log: log, stamps: map[string]stamp{}}
	if err := r.load(); err != nil {
		return nil, err
	}
	r.checked = time.Now()
	return r, nil
}

// Serving reports whether a server certificate is configured.
func (r *Reloader) Serving() bool { return r.files.Cert != "" }

func (r *Reloader) load() error {
	var errs []error
	if r.files.Cert != "" {
		c, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
		if err != nil {
			errs = append(errs, fmt.Errorf("tls_cert/tls_key: %w", err))
		} else {
			r.cert = &c
		}
	}
	if r.files.ClientCert != "" {
		c, err := tls.LoadX509KeyPair(r.files.ClientCert, r.files.ClientKey)
		if err != nil {
			errs = append(errs, fmt.Errorf("tls_client_cert/tls_client_key: %w", err))
		} else {
			r.clientCert = &c
		}
	}
	if r.files.CA != "" {
		pem, err := os.ReadFile(r.files.CA)
		pool := x509.NewCertPool()
		if err == nil && !pool.AppendCertsFromPEM(pem) {
			err = errors.New("no PEM certificate in it")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("tls_ca: %w", err))
		} else {
			r.pool = pool
		}
	}
	for _, p := range []string{r.files.Cert, r.files.Key, r.files.CA, r.files.ClientCert, r.files.ClientKey} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			r.stamps[p] = stamp{fi.ModTime(), fi.Size()}
		}
	}
	return errors.Join(errs...)
}

// refresh reloads the files if any changed since the last check.
func (r *Reloader) refresh() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < checkEvery {
		return
	}
	r.checked = time.Now()
	changed := false
	for p, st := range r.stamps {
		fi, err := os.Stat(p)
		if err != nil || !fi.ModTime().Equal(st.mod) || fi.Size() != st.size {
			changed = true
			break
		}
	}
	if !changed {
		return
	}
	if err := r.load(); err != nil {
		r.log.Error("TLS files changed but did not load; the previous certificates stay in use", "err", err)
		return
	}
	r.log.Info("TLS certificates reloaded")
}

func (r *Reloader) current() (cert, client *tls.Certificate, pool *x509.CertPool) {
	r.refresh()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert, r.clientCert, r.pool
}

// ServerConfig is the listener's configuration: the current server
// certificate and, when a CA is set, client certificates verified against
// it if presented (tls.VerifyClientCertIfGiven: public clients need none;
// node-to-node routes may demand one, see PeerVerified). It offers HTTP/2
// and HTTP/1.1 by ALPN (NextProtos "h2", "http/1.1"), so the http.Server
// serving it must speak both (its default); change NextProtos of the
// returned configuration, before it is used, to offer other protocols.
func (r *Reloader) ServerConfig() *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, _, pool := r.current()
		if cert == nil {
			return nil, errors.New("no server certificate")
		}
		// The configuration returned here replaces base for this
		// handshake, ALPN included: without base's protocols no client
		// could negotiate HTTP/2.
		c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}, NextProtos: base.NextProtos}
		if pool != nil {
			c.ClientCAs = pool
			c.ClientAuth = tls.VerifyClientCertIfGiven
		}
		return c, nil
	}
	return base
}

// UseFor makes tr's HTTPS connections to peers check each peer's
// certificate against the current CA bundle (or the system roots) and the
// host it dialled, and present this node's client certificate when
// configured. dial makes the TCP connection (tr.DialContext if nil).
//
// The handshake is made in tr.DialTLSContext with the dialled host as the
// name to check: crypto/tls sends no SNI for an IP address, so the
// ConnectionState a verification callback sees names no host, and a peer
// listed by address (https://10.0.0.2:8443) was taken with a certificate
// for any name the CA signed (TestPeerTLSChecksIPAddress). tr's
// TLSClientConfig still serves connections through a proxy; it refuses a
// peer it cannot name.
func (r *Reloader) UseFor(tr *http.Transport, dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	if dial == nil {
		dial = tr.DialContext
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	tr.TLSClientConfig = r.clientConfig("")
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		defer cancel()
		c := tls.Client(raw, r.clientConfig(host))
		if err := c.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, err
		}
		return c, nil
	}
}

// handshakeTimeout bounds a TLS handshake with a peer (what
// http.Transport's TLSHandshakeTimeout would, which DialTLSContext
// replaces).
const handshakeTimeout = 10 * time.Second

// clientConfig is the configuration for a connection to peer host (""
// for whatever name the connection says it is for: none, for an IP
// address, is refused).
func (r *Reloader) clientConfig(host string) *tls.Config {
	return &tls.Config{
		ServerName: host,
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			_, client, _ := r.current()
			if client == nil {
				return &tls.Certificate{}, nil
			}
			return client, nil
		},
		// Verification is done below against the current pool (which may
		// have been reloaded), not against a pool fixed at start-up.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, _, pool := r.current()
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: peer sent no certificate")
			}
			name := host
			if name == "" {
				name = cs.ServerName
			}
			if name == "" {
				return errors.New("tls: no host name to check the peer's certificate against")
			}
			opts := x509.VerifyOptions{
				DNSName:       name,
				Roots:         pool, // nil: the system roots
				Intermediates: x509.NewCertPool(),
			}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}
}
