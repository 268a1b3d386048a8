package peer_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/tlsreload"
	"github.com/dtfc/dtfc/peer"
)

// testCA makes a CA and a server certificate it signs for dnsName only
// (no IP address).
func testCA(t *testing.T, dnsName string) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "review CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestPeerTLSChecksIPAddress: a peer listed by IP address
// (https://10.0.0.2:8443, as the peer list example does) must present a
// certificate for that address. tlsreload's client configuration
// verified the chain against tls_ca but named no host when the peer is an
// address (tls.ConnectionState.ServerName is "" then: no SNI for IPs), so
// any certificate the CA (or, without tls_ca, any public CA) signed for
// any name was taken, and the node sent that impostor its cluster secret
// (found by a review helper).
func TestPeerTLSChecksIPAddress(t *testing.T) {
	caPEM, impostorCert := testCA(t, "impostor.example")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, caPEM, 0o600))

	var leaked atomic.Value // the cluster secret the impostor was sent
	impostor := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.Header.Get(peer.HeaderSecret); s != "" {
			leaked.Store(s)
		}
		http.Error(w, "impostor", http.StatusInternalServerError)
	}))
	impostor.TLS = &tls.Config{Certificates: []tls.Certificate{impostorCert}}
	impostor.StartTLS()
	defer impostor.Close()
	require.True(t, strings.HasPrefix(impostor.URL, "https://127.0.0.1:"))

	// The standard library refuses it: the certificate is not for
	// 127.0.0.1.
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(caPEM))
	std := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	_, err := std.Get(impostor.URL)
	require.Error(t, err, "crypto/tls refuses a certificate for another name")
	std.CloseIdleConnections()

	// dtfc's peer client, configured as cmd/dtfc's newCluster does.
	tlsr, err := tlsreload.New(tlsreload.Files{CA: caFile}, nil)
	require.NoError(t, err)
	hc := peer.DefaultHTTPClient(nil)
	tlsr.UseFor(hc.Transport.(*http.Transport), nil)
	defer hc.CloseIdleConnections()

	// A real node with that client and a cluster secret, whose peer list
	// names the impostor's address.
	n := newNode(t, nodeOpts{run: true, peer: func(o *peer.Options) {
		o.Secret = "the-cluster-secret"
		o.HTTPClient = hc
	}})
	require.NoError(t, os.WriteFile(n.peerFile, []byte("[[peers]]\nurl = \""+impostor.URL+"\"\n"), 0o644))
	n.start()
	n.put(randomBytes(t, 100)) // something to push

	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, ok := leaked.Load().(string); ok {
			t.Fatalf("the node sent its cluster secret (%q) to a peer whose certificate is for impostor.example, not 127.0.0.1", s)
		}
		refused := false
		for _, p := range n.Cluster.Status().Peers {
			if p.URL == impostor.URL && strings.Contains(p.LastError, "certificate") {
				refused = true
			}
		}
		if refused {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out: the node neither refused the impostor's certificate nor sent it anything")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEmptyClusterSecretEntry: cluster_secret = ["", "new"] (or
// ["new", ""]) passes cmd/dtfc's check that a secret is set (anySet), and
// peer.Options gets Secret: first(list), AcceptSecrets: the list, empty
// entry included (cmd/dtfc/serve.go newCluster). README: "an empty token
// or secret is ignored, as if unset". An empty accepted secret opened
// /_internal to a request without the header (found by a review helper).
func TestEmptyClusterSecretEntry(t *testing.T) {
	for _, tc := range []struct {
		name   string
		send   string
		accept []string
	}{
		{"empty first", "", []string{"", "new"}},
		{"empty last", "new", []string{"new", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, nodeOpts{peer: func(o *peer.Options) {
				o.Secret, o.AcceptSecrets = tc.send, tc.accept
			}})
			n.start()
			id := n.put(randomBytes(t, 100))
			st, err := n.Store.Stat(id)
			require.NoError(t, err)

			// A tombstone offered without any secret.
			body, err := json.Marshal(map[string]any{"changes": []dtfc.State{{
				ID: id, Deleted: true, Clock: st.Clock + 1<<20, Node: "intruder",
			}}})
			require.NoError(t, err)
			resp, err := http.Post(n.URL+"/_internal/changes", "application/json", bytes.NewReader(body))
			require.NoError(t, err)
			resp.Body.Close()
			after, _ := n.Store.Stat(id)
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode,
				"a request without %s was taken (blob deleted: %v)", peer.HeaderSecret, after.Deleted)
		})
	}
}

// TestPeerClientFollowsNoRedirect: Go's client sends a request's headers,
// the cluster secret among them, to wherever a redirect points; the peer
// client follows none and returns the 3xx.
func TestPeerClientFollowsNoRedirect(t *testing.T) {
	var leaked atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get(peer.HeaderSecret) != "")
	}))
	defer target.Close()
	redirector := httptest.NewServer(http.RedirectHandler(target.URL+"/elsewhere", http.StatusFound))
	defer redirector.Close()
	req, err := http.NewRequest(http.MethodGet, redirector.URL+"/_internal/digests", nil)
	require.NoError(t, err)
	req.Header.Set(peer.HeaderSecret, "the-cluster-secret")
	hc := peer.DefaultHTTPClient(nil)
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusFound, resp.StatusCode)
	assert.False(t, leaked.Load(), "the redirect's target got the secret")
}
