package main_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dtfc/dtfc/internal/cluster"
)

// dtfcBin is the dtfc binary built once for every test here.
var dtfcBin string

// deadline bounds every wait: generous, for a noisy 2-core machine.
const deadline = 30 * time.Second

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dtfc-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	dtfcBin = filepath.Join(dir, "dtfc")
	build := exec.Command("go", "build", "-o", dtfcBin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building dtfc: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: leaked goroutines: %v\n", err)
			return 1
		}
	}
	return code
}

// proc is a running dtfc process.
type proc struct {
	cmd    *exec.Cmd
	url    string
	stderr *cluster.Output
	done   chan struct{} // closed once the process has exited
	err    error         // cmd.Wait's answer, once done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit, within the deadline, and returns its
// exit code.
func (p *proc) wait(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(deadline):
		require.FailNow(t, "dtfc did not exit in time", "stderr:\n%s", p.stderr)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, p.err)
	return 0
}

// freePort returns a port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return port
}

// httpClient is for the tests' own requests; no connection outlives a
// request, so nothing leaks between tests.
var httpClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// healthy reports whether url answers /health with 200.
func healthy(url string) bool { return healthyWith(httpClient, url) }

func healthyWith(hc *http.Client, url string) bool {
	resp, err := hc.Get(url + "/health")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// startProc starts dtfc with args and waits until url answers /health.
// The process is killed (by its PID) in t.Cleanup if still running.
func startProc(t testing.TB, url string, args ...string) *proc {
	t.Helper()
	return startProcWith(t, httpClient, url, args...)
}

// startProcWith is startProc checking /health with hc (for HTTPS).
func startProcWith(t testing.TB, hc *http.Client, url string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(dtfcBin, args...), url: url, stderr: &cluster.Output{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	p.cmd.Stdout = p.stderr
	p.cmd.Env = cleanEnv()
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
		}
		<-p.done
		if t.Failed() {
			t.Logf("dtfc %s stderr:\n%s", strings.Join(args, " "), p.stderr)
		}
	})
	end := time.Now().Add(deadline)
	for !healthyWith(hc, url) {
		if p.exited() {
			require.FailNow(t, "dtfc exited before answering /health", "args %q\nstderr:\n%s", args, p.stderr)
		}
		if time.Now().After(end) {
			require.FailNow(t, "dtfc did not answer /health in time", "stderr:\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// startServer runs `dtfc serve` on a free loopback port over basedir.
func startServer(t testing.TB, basedir string, extra ...string) *proc {
	t.Helper()
	port := freePort(t)
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	args := append([]string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--basedir", basedir}, extra...)
	return startProc(t, url, args...)
}

// cleanEnv is the environment without the client's defaults.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DTFC_") {
			env = append(env, kv)
		}
	}
	return env
}

// cli runs one dtfc command to completion.
func cli(t testing.TB, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, dtfcBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	cmd.Env = cleanEnv()
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "dtfc %q did not finish in time; stderr:\n%s", args, errb.String())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	}
	require.NoError(t, err, "dtfc %q", args)
	return out.String(), errb.String(), 0
}

func sum(b []byte) string {
	s := sha512.Sum512(b)
	return hex.EncodeToString(s[:])
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// sha512sum asks the system's sha512sum, if there is one, to agree.
func sha512sum(t testing.TB, path string) string {
	t.Helper()
	if _, err := exec.LookPath("sha512sum"); err != nil {
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		return sum(b)
	}
	out, err := exec.Command("sha512sum", path).Output()
	require.NoError(t, err)
	f := strings.Fields(string(out))
	require.NotEmpty(t, f)
	return f[0]
}

func TestCLIRoundTrip(t *testing.T) {
	base := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, base)
	dir := t.TempDir()
	f1, f2 := filepath.Join(dir, "one.bin"), filepath.Join(dir, "two.txt")
	d1, d2 := randBytes(1, 300<<10), []byte("the second file\n")
	require.NoError(t, os.WriteFile(f1, d1, 0o644))
	require.NoError(t, os.WriteFile(f2, d2, 0o644))

	out, errOut, code := cli(t, nil, "put", "--server", srv.url, f1, f2)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	ids := strings.Fields(out)
	require.Len(t, ids, 2, "one ID per line: %q", out)
	assert.Equal(t, []string{sha512sum(t, f1), sha512sum(t, f2)}, ids)
	assert.Equal(t, sum(d1)+"\n"+sum(d2)+"\n", out)
	id1, id2 := ids[0], ids[1]

	// The blobs are where nginx would look.
	got, err := os.ReadFile(filepath.Join(base, "blobs", id1[0:2], id1[2:4], id1))
	require.NoError(t, err)
	assert.True(t, bytes.Equal(d1, got))

	// get -o FILE, the flag before and after the ID.
	o1 := filepath.Join(dir, "out1")
	_, errOut, code = cli(t, nil, "get", "--server", srv.url, id1, "-o", o1)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	got, err = os.ReadFile(o1)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(d1, got), "get -o wrote other bytes")
	o2 := filepath.Join(dir, "out2")
	_, errOut, code = cli(t, nil, "get", "--server", srv.url, "-o", o2, strings.ToUpper(id2))
	require.Equal(t, 0, code, "stderr: %s", errOut)
	got, err = os.ReadFile(o2)
	require.NoError(t, err)
	assert.Equal(t, d2, got)

	// get to standard output.
	out, errOut, code = cli(t, nil, "get", "--server", srv.url, id1)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	assert.True(t, out == string(d1), "get to stdout: %d bytes, not the %d uploaded", len(out), len(d1))

	// put - reads standard input.
	d3 := []byte("from stdin")
	out, errOut, code = cli(t, bytes.NewReader(d3), "put", "--server", srv.url, "-")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	assert.Equal(t, sum(d3)+"\n", out)

	// rm, then get fails.
	out, errOut, code = cli(t, nil, "rm", "--server", srv.url, id1)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	assert.Contains(t, out, id1)
	assert.NoFileExists(t, filepath.Join(base, "blobs", id1[0:2], id1[2:4], id1))
	o3 := filepath.Join(dir, "out3")
	_, errOut, code = cli(t, nil, "get", "--server", srv.url, id1, "-o", o3)
	assert.NotEqual(t, 0, code, "get after rm")
	assert.Contains(t, strings.ToLower(errOut), "not found")
	assert.NoFileExists(t, o3)
	_, _, code = cli(t, nil, "get", "--server", srv.url, id1)
	assert.NotEqual(t, 0, code, "get to stdout after rm")

	// status prints JSON.
	out, errOut, code = cli(t, nil, "status", "--server", srv.url)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &st), "status output: %s", out)
	assert.Contains(t, st, "blobs")
	assert.EqualValues(t, 2, st["blobs"])
	assert.Equal(t, srv.url, st["node"])

	// Nothing was left beside the outputs.
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.ElementsMatch(t, []string{"one.bin", "two.txt", "out1", "out2"}, names)
}

func TestGetRejectsWrongBytes(t *testing.T) {
	want := []byte("the bytes that were asked for")
	id := sum(want)
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write([]byte("the bytes that were not asked for"))
	}))
	t.Cleanup(liar.Close)

	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	_, errOut, code := cli(t, nil, "get", "--server", liar.URL, id, "-o", out)
	assert.NotEqual(t, 0, code, "get of wrong bytes must fail")
	assert.Contains(t, errOut, "does not match")
	assert.NoFileExists(t, out)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "no temp file left beside -o")

	_, _, code = cli(t, nil, "get", "--server", liar.URL, id)
	assert.NotEqual(t, 0, code, "get of wrong bytes to stdout must fail")
}

func TestConfigUnknownKey(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dtfc.toml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(
		"host = \"127.0.0.1\"\nport = %d\ncolour = \"blue\"\nbasedir = %q\n", freePort(t), filepath.Join(dir, "data"))), 0o644))
	_, errOut, code := cli(t, nil, "serve", "--config", cfg)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "line 3")
	assert.Contains(t, errOut, "colour")
	assert.NoDirExists(t, filepath.Join(dir, "data"), "nothing is created for a refused config")
}

func TestConfigFlagsWin(t *testing.T) {
	dir := t.TempDir()
	portA, portB := freePort(t), freePort(t)
	for portB == portA {
		portB = freePort(t)
	}
	cfg := filepath.Join(dir, "dtfc.toml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(
		"host = \"127.0.0.1\"\nport = %d\nbasedir = %q\nmax_upload_bytes = 1024\n", portA, filepath.Join(dir, "data"))), 0o644))
	urlB := "http://127.0.0.1:" + strconv.Itoa(portB)
	startProc(t, urlB, "serve", "--config", cfg, "--port", strconv.Itoa(portB))

	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(portA), time.Second)
	if err == nil {
		c.Close()
	}
	assert.Error(t, err, "nothing listens on the file's port")

	// The file's other settings hold.
	assert.DirExists(t, filepath.Join(dir, "data", "blobs"))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, urlB+"/big.bin", bytes.NewReader(make([]byte, 2000)))
	require.NoError(t, err)
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "max_upload_bytes from the file")
}

// putStatus uploads n zero bytes and returns the status.
func putStatus(t testing.TB, url string, n int) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, url+"/sized.bin", bytes.NewReader(make([]byte, n)))
	require.NoError(t, err)
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestByteSizeSettings(t *testing.T) {
	tests := []struct {
		name  string
		file  string // max_upload_bytes in the config file, if any
		flag  string // --max-upload-bytes, if any
		limit int
	}{
		{name: "integer in the file", file: "1024", limit: 1024},
		{name: "KB in the file", file: `"2KB"`, limit: 2000},
		{name: "KiB in the file", file: `"1KiB"`, limit: 1024},
		{name: "KiB flag", flag: "1KiB", limit: 1024},
		{name: "MiB flag", flag: "1MiB", limit: 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			port := freePort(t)
			url := "http://127.0.0.1:" + strconv.Itoa(port)
			args := []string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--basedir", filepath.Join(dir, "data")}
			if tt.file != "" {
				cfg := filepath.Join(dir, "dtfc.toml")
				require.NoError(t, os.WriteFile(cfg, []byte("max_upload_bytes = "+tt.file+"\n"), 0o644))
				args = append(args, "--config", cfg)
			}
			if tt.flag != "" {
				args = append(args, "--max-upload-bytes", tt.flag)
			}
			startProc(t, url, args...)
			assert.Equal(t, http.StatusRequestEntityTooLarge, putStatus(t, url, tt.limit+1))
			assert.Equal(t, http.StatusCreated, putStatus(t, url, tt.limit))
		})
	}
}

func TestSIGTERM(t *testing.T) {
	base := filepath.Join(t.TempDir(), "data")
	p := startServer(t, base)
	data := []byte("kept across a clean restart")
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, p.url+"/keep.txt", bytes.NewReader(data))
	require.NoError(t, err)
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, p.wait(t), "exit code after SIGTERM; stderr:\n%s", p.stderr)
	assert.Contains(t, p.stderr.String(), "stopped")

	p2 := startServer(t, base)
	assert.Equal(t, data, mustGet(t, p2.url, sum(data)))
	require.NoError(t, p2.cmd.Process.Signal(syscall.SIGINT))
	assert.Equal(t, 0, p2.wait(t), "exit code after SIGINT; stderr:\n%s", p2.stderr)
}

// mustGet downloads id and checks the answer is 200.
func mustGet(t testing.TB, url, id string) []byte {
	t.Helper()
	resp, err := httpClient.Get(url + "/" + id)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", id, b)
	return b
}

// gatedReader yields n bytes of r, then blocks until gate is closed and
// fails: an upload that stalls after a given amount until the test is done
// with it.
type gatedReader struct {
	r    io.Reader
	n    int64
	gate <-chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.n <= 0 {
		<-g.gate
		return 0, errors.New("upload abandoned by the test")
	}
	if int64(len(p)) > g.n {
		p = p[:g.n]
	}
	k, err := g.r.Read(p)
	g.n -= int64(k)
	return k, err
}

func TestKill9DuringUpload(t *testing.T) {
	base := filepath.Join(t.TempDir(), "data")
	p := startServer(t, base)

	small := map[string][]byte{}
	for i := range 3 {
		d := randBytes(uint64(100+i), 1000*(i+1))
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, fmt.Sprintf("%s/small%d.bin", p.url, i), bytes.NewReader(d))
		require.NoError(t, err)
		resp, err := httpClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		small[sum(d)] = d
	}

	// A 300 MiB upload, generated as it is sent, that stalls after 64 MiB
	// until the server has been killed.
	const total, sent = 300 << 20, 64 << 20
	gate := make(chan struct{})
	body := &gatedReader{r: rand.NewChaCha8([32]byte{7}), n: sent, gate: gate}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	uploadErr := make(chan error, 1)
	go func() {
		req, err := http.NewRequest(http.MethodPut, p.url+"/huge.bin", body)
		if err != nil {
			uploadErr <- err
			return
		}
		req.ContentLength = total
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("the upload was answered %s", resp.Status)
		}
		uploadErr <- err
	}()
	var openGate sync.Once
	release := func() { openGate.Do(func() { close(gate) }) }
	defer func() {
		// Whatever happens, let the upload end before the test does.
		release()
		<-uploadErr
	}()

	tmp := filepath.Join(base, "tmp")
	end := time.Now().Add(deadline)
	for !hasFileOver(t, tmp, 10<<20) {
		require.False(t, time.Now().After(end), "no temp file of more than 10 MiB appeared; stderr:\n%s", p.stderr)
		require.False(t, p.exited(), "dtfc exited during the upload; stderr:\n%s", p.stderr)
		time.Sleep(5 * time.Millisecond)
	}
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	code := p.wait(t)
	assert.Equal(t, -1, code, "killed by a signal")
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	assert.Equal(t, syscall.SIGKILL, ws.Signal())
	release()
	select {
	case err := <-uploadErr:
		assert.Error(t, err, "the interrupted upload cannot succeed")
		uploadErr <- err // for the deferred wait
	case <-time.After(deadline):
		require.FailNow(t, "the interrupted upload did not end")
	}

	p2 := startServer(t, base)
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	assert.Empty(t, entries, "temp files are swept after a crash")

	// Every file under blobs/ is complete: it hashes to its name, in its
	// shard.
	var blobFiles []string
	err = filepath.WalkDir(filepath.Join(base, "blobs"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		name := d.Name()
		assert.Equal(t, name, sum(b), "blob file %s does not hash to its name", path)
		if len(name) == 128 {
			assert.Equal(t, filepath.Join(base, "blobs", name[0:2], name[2:4], name), path)
		}
		blobFiles = append(blobFiles, name)
		return nil
	})
	require.NoError(t, err)
	var want []string
	for id := range small {
		want = append(want, id)
	}
	assert.ElementsMatch(t, want, blobFiles, "exactly the acknowledged uploads are under blobs/")

	for id, d := range small {
		assert.Equal(t, d, mustGet(t, p2.url, id), "acknowledged upload %s", id[:16])
	}
	resp, err := httpClient.Get(p2.url + "/_status")
	require.NoError(t, err)
	var st map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	resp.Body.Close()
	assert.EqualValues(t, 3, st["blobs"])
}

// hasFileOver reports whether dir holds a file larger than n bytes.
func hasFileOver(t testing.TB, dir string, n int64) bool {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	require.NoError(t, err)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Size() > n {
			return true
		}
	}
	return false
}

func TestVersionAndUnknownCommand(t *testing.T) {
	out, errOut, code := cli(t, nil, "version")
	assert.Equal(t, 0, code, "stderr: %s", errOut)
	assert.NotEmpty(t, strings.TrimSpace(out))
	assert.Contains(t, out, "dtfc")

	_, errOut, code = cli(t, nil, "nosuch")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "nosuch")

	// A wrong command line exits 2, as an unknown command does; a
	// command that fails exits 1.
	for _, args := range [][]string{{"put"}, {"get"}, {"get", "a", "b"}, {"rm"}, {"put", "--bogus", "f"}, {"serve", "--bogus"}, {"serve", "extra"}} {
		_, errOut, code = cli(t, nil, args...)
		assert.Equal(t, 2, code, "%q: %s", args, errOut)
	}
	_, errOut, code = cli(t, nil, "get", "--server", "http://127.0.0.1:1", strings.Repeat("ab", 64))
	assert.Equal(t, 1, code, "a get that fails: %s", errOut)

	out, _, code = cli(t, nil, "help")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "Usage")
}
