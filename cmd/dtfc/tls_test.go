package main_test

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
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64 = 1000

func newCA(t testing.TB, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for 127.0.0.1, good for serving and as a
// client certificate, and returns its paths and serial number.
func (ca *testCA) issue(t testing.TB, dir, name string) (certPath, keyPath string, sn int64) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial++
	sn = serial
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(sn), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	kd, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	// Write then rename, as a renewal tool would: a reader never sees half.
	for path, data := range map[string][]byte{
		certPath: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPath:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}),
	} {
		require.NoError(t, os.WriteFile(path+".tmp", data, 0o600))
		require.NoError(t, os.Rename(path+".tmp", path))
	}
	return certPath, keyPath, sn
}

// tlsClient trusts ca and presents cert (if given).
func tlsClient(t testing.TB, ca *testCA, certPath, keyPath string) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certPath != "" {
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		require.NoError(t, err)
		cfg.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}, Timeout: deadline}
}

type tlsNode struct {
	url, dir, cert, key, ca string
	port                    int
	proc                    *proc
}

// TestTLSCluster: three nodes serve HTTPS and replicate over mutual TLS;
// node-to-node routes refuse a request without a client certificate; a
// node whose certificates come from another CA can neither push to nor
// fetch from the cluster; a renewed certificate is served without a
// restart.
func TestTLSCluster(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "cluster CA")
	other := newCA(t, "some other CA")
	caPath := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caPath, ca.pem, 0o644))

	var nodes []*tlsNode
	for i := range 4 {
		port := freePort(t)
		n := &tlsNode{port: port, url: "https://127.0.0.1:" + strconv.Itoa(port), dir: filepath.Join(dir, fmt.Sprint("node", i)), ca: caPath}
		issuer := ca
		if i == 3 {
			issuer = other // the outsider: trusts the cluster's CA, holds another's certificate
		}
		n.cert, n.key, _ = issuer.issue(t, dir, fmt.Sprint("node", i))
		nodes = append(nodes, n)
	}
	var peers strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&peers, "[[peers]]\nurl = %q\n", n.url)
	}
	peerFile := filepath.Join(dir, "peers.toml")
	require.NoError(t, os.WriteFile(peerFile, []byte(peers.String()), 0o644))

	clusterClient := tlsClient(t, ca, "", "")
	for i, n := range nodes {
		hc := clusterClient
		if i == 3 {
			hc = tlsClient(t, other, "", "")
		}
		n.proc = startProcWith(t, hc, n.url, "serve", "--host", "127.0.0.1", "--port", strconv.Itoa(n.port),
			"--me", n.url, "--basedir", n.dir, "--peerlist", peerFile,
			"--tls-cert", n.cert, "--tls-key", n.key, "--tls-ca", n.ca,
			"--tls-client-cert", n.cert, "--tls-client-key", n.key, "--tls-require-peer-cert",
			"--anti-entropy-interval", "1s", "--cluster-secret", "also-a-secret")
	}

	// Replication over mutual TLS.
	data := bytes.Repeat([]byte("over TLS "), 10000)
	id := sum(data)
	resp, err := clusterClient.Post(nodes[0].url+"/", "application/octet-stream", bytes.NewReader(data))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	for _, n := range nodes[1:3] {
		waitUntil(t, "replicated to "+n.url, func() bool {
			return statusOf(clusterClient, n.url+"/"+id+"?nopeerload=1") == http.StatusOK
		})
	}

	// Node-to-node routes: no client certificate, 403; a certificate from
	// another CA fails the handshake. Public routes stay open to clients
	// without certificates.
	withSecret := func(hc *http.Client, url string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("X-Dtfc-Cluster-Secret", "also-a-secret")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	code, err := withSecret(clusterClient, nodes[0].url+"/_internal/digests")
	require.NoError(t, err)
	assert.Equal(t, http.StatusForbidden, code, "no client certificate")
	outCert, outKey, _ := other.issue(t, dir, "intruder")
	// Refused either at the handshake or, as Go's client does (it offers
	// no certificate the server's CA list does not name), with 403.
	code, err = withSecret(tlsClient(t, ca, outCert, outKey), nodes[0].url+"/_internal/digests")
	assert.True(t, err != nil || code == http.StatusForbidden, "a certificate from another CA is refused (got %d, %v)", code, err)
	goodCert, goodKey, _ := ca.issue(t, dir, "operator")
	code, err = withSecret(tlsClient(t, ca, goodCert, goodKey), nodes[0].url+"/_internal/digests")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, "the cluster's certificate and the secret open it")
	assert.Equal(t, http.StatusOK, statusOf(clusterClient, nodes[0].url+"/health"))

	// The outsider: its attempts fail on certificates, so it never gets
	// the file, and what is uploaded to it never reaches the cluster.
	outsider := tlsClient(t, other, "", "")
	odata := []byte("uploaded to the outsider")
	resp, err = outsider.Post(nodes[3].url+"/", "application/octet-stream", bytes.NewReader(odata))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	waitUntil(t, "the outsider's peers fail on certificates", func() bool {
		st := statusJSON(t, outsider, nodes[3].url)
		return strings.Contains(st, "certificate") && strings.Contains(st, `"up":false`)
	})
	waitUntil(t, "node 0 failed to reach the outsider", func() bool {
		return strings.Contains(statusJSON(t, clusterClient, nodes[0].url), "certificate")
	})
	assert.Equal(t, http.StatusNotFound, statusOf(outsider, nodes[3].url+"/"+id+"?nopeerload=1"))
	for _, n := range nodes[:3] {
		assert.Equal(t, http.StatusNotFound, statusOf(clusterClient, n.url+"/"+sum(odata)+"?nopeerload=1"))
	}

	// Renewal: new files in place; the node serves the new certificate
	// within seconds, without a restart.
	_, _, newSerial := ca.issue(t, dir, "node1")
	waitUntil(t, "the renewed certificate is served", func() bool {
		conn, err := tls.Dial("tcp", strings.TrimPrefix(nodes[1].url, "https://"), &tls.Config{RootCAs: clusterClient.Transport.(*http.Transport).TLSClientConfig.RootCAs})
		if err != nil {
			return false
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64() == newSerial
	})
	// And replication still works with it.
	data2 := []byte("after the renewal")
	resp, err = clusterClient.Post(nodes[0].url+"/", "text/plain", bytes.NewReader(data2))
	require.NoError(t, err)
	resp.Body.Close()
	waitUntil(t, "replicated after renewal", func() bool {
		return statusOf(clusterClient, nodes[1].url+"/"+sum(data2)+"?nopeerload=1") == http.StatusOK
	})
	assert.True(t, strings.Contains(nodes[1].proc.stderr.String(), "TLS certificates reloaded"))

	// The CLI reaches an HTTPS node with --ca.
	out, stderr, code2 := cli(t, nil, "get", "--server", nodes[2].url, "--ca", caPath, sum(data2))
	assert.Equal(t, 0, code2, stderr)
	assert.Equal(t, string(data2), out)
}

func statusOf(hc *http.Client, url string) int {
	resp, err := hc.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func statusJSON(t testing.TB, hc *http.Client, base string) string {
	resp, err := hc.Get(base + "/_status")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var v any
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			require.FailNow(t, "timed out waiting: "+what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
