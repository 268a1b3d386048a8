// Package versitygw runs versitygw, a real S3 server over a directory,
// on a loopback port for the tests of archive peers. It is installed by
// go install into a cache outside the repository (.ci/run); a test
// without it is skipped, saying how to install it.
package versitygw

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dtfc/dtfc/internal/testproc"
)

// Version is the versitygw the tests were checked with.
const Version = "v1.8.0"

// The root credentials every server is started with.
const (
	AccessKey = "dtfctestroot"
	SecretKey = "dtfctestrootsecret"
)

// Binary returns the versitygw executable ($DTFC_VERSITYGW, else
// ~/.cache/dtfc-tools/versitygw), or a message saying how to install it.
func Binary() (bin, missing string) {
	bin = os.Getenv("DTFC_VERSITYGW")
	if bin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		bin = filepath.Join(home, ".cache", "dtfc-tools", "versitygw")
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Sprintf("versitygw is not installed at %s; run: GOBIN=$HOME/.cache/dtfc-tools go install github.com/versity/versitygw/cmd/versitygw@%s (or set DTFC_VERSITYGW)", bin, Version)
	}
	return bin, ""
}

// Server is a versitygw process serving Root (one directory per bucket)
// on a loopback port. It keeps its port and directory across restarts.
type Server struct {
	URL    string // http://127.0.0.1:PORT
	Root   string // the directory served: Root/<bucket>/<key>
	Bucket string // the bucket ForTest created

	bin  string
	dir  string // its log
	proc testproc.Proc
}

// ForTest starts a server for t with one bucket, stopped (by its PID) in
// t.Cleanup, its output logged if t failed; t is skipped, saying how to
// install it, when versitygw is not installed.
func ForTest(t testing.TB) *Server {
	t.Helper()
	bin, msg := Binary()
	if bin == "" {
		t.Skip(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	s := &Server{URL: "http://127.0.0.1:" + strconv.Itoa(port), Root: filepath.Join(dir, "root"), Bucket: "dtfc-test", bin: bin, dir: dir}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(); err != nil {
			t.Errorf("versitygw: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			t.Logf("versitygw output:\n%s", b)
		}
	})
	s.Start(t)
	if err := s.CreateBucket(t.Context(), s.Bucket); err != nil {
		t.Fatalf("versitygw: creating the bucket: %v", err)
	}
	return s
}

// SecretFile writes the root secret key to a file of tb's, to be an
// archive's secret_access_key_file, and returns its path.
func SecretFile(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "s3-secret")
	if err := os.WriteFile(path, []byte(SecretKey+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// PeerEntry is the peer list entry of an archive in the server's bucket
// under prefix, with the root credentials, the secret key in the file
// secret (SecretFile).
func (s *Server) PeerEntry(prefix, secret string) string {
	return fmt.Sprintf("[[peers]]\nurl = %q\nrole = \"archive\"\nendpoint = %q\npath_style = true\naccess_key_id = %q\nsecret_access_key_file = %q\n",
		"s3://"+s.Bucket+"/"+prefix, s.URL, AccessKey, secret)
}

// Client returns an S3 client of the server with the root credentials.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(s.URL), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// CreateBucket creates a bucket.
func (s *Server) CreateBucket(ctx context.Context, name string) error {
	_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	return err
}

// Path is the file holding key in the test bucket.
func (s *Server) Path(key string) string {
	return filepath.Join(s.Root, s.Bucket, filepath.FromSlash(key))
}

// LeaveMetadataOnly leaves, for key in the test bucket, what the server
// leaves when it dies (or a write fails) between writing an object's
// metadata and putting its file in place: metadata in its sidecar
// directory (an ETag), no object. The server then refuses every
// conditional write of key (If-None-Match: *) and neither lists nor
// serves it.
func (s *Server) LeaveMetadataOnly(key string) error {
	dir := filepath.Join(s.dir, "meta", s.Bucket, filepath.FromSlash(key), "meta")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etag"), []byte(`"d41d8cd98f00b204e9800998ecf8427e"`), 0o644)
}

// Start (re)starts the server and waits until it answers, failing t if
// it cannot.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.Launch(); err != nil {
		t.Fatalf("versitygw: %v", err)
	}
}

// Stop stops the server, failing t if it cannot.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.Shutdown(); err != nil {
		t.Fatalf("versitygw: %v", err)
	}
}

// Launch starts the server and waits (at most 30 s) until it answers.
func (s *Server) Launch() error {
	out, err := os.OpenFile(filepath.Join(s.dir, "versitygw.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	// --sidecar: metadata beside the objects rather than in extended
	// attributes, which a temp directory's filesystem may not have.
	side := filepath.Join(s.dir, "meta")
	if err := os.MkdirAll(side, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "--port", s.URL[len("http://"):], "posix", "--sidecar", side, s.Root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	cmd.Stdout, cmd.Stderr = out, out
	return s.proc.Launch(cmd, 30*time.Second, func(hc *http.Client) bool {
		// Any HTTP answer (403 to an unsigned request) means it serves.
		resp, err := hc.Get(s.URL + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
}

// Shutdown stops the server (SIGTERM, then SIGKILL, to its PID) and
// waits for its exit. It does nothing if it is not running.
func (s *Server) Shutdown() error { return s.proc.Shutdown() }

// Kill kills the server (SIGKILL to its PID) and waits for its exit: a
// crash, and no wait for the connections in flight to end. It does
// nothing if it is not running.
func (s *Server) Kill() error { return s.proc.Kill() }
