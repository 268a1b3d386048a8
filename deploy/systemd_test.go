package deploy_test

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// unitFile is a systemd unit as key → values per section.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "line %d: %q", n, line)
			require.NotEmpty(t, section, "line %d: outside a section", n)
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// systemdSeconds parses a systemd time span such as "45s", "1min 30s", "90".
func systemdSeconds(t *testing.T, s string) float64 {
	t.Helper()
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		return n
	}
	d, err := time.ParseDuration(strings.NewReplacer("min", "m", " ", "").Replace(s))
	require.NoError(t, err, "time span %q", s)
	return d.Seconds()
}

// TestSystemdUnit checks deploy/dtfc.service: its hardening and lifecycle
// settings, that dtfc takes its command line and signals as the unit uses
// them, and, where systemd-analyze is installed, that systemd accepts it.
func TestSystemdUnit(t *testing.T) {
	text := readRepoFile(t, "deploy", "dtfc.service")
	u := parseUnit(t, text)

	for k, want := range map[string]string{
		"DynamicUser":     "yes",
		"StateDirectory":  "dtfc",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
		"NoNewPrivileges": "yes",
		"LimitNOFILE":     "65536",
		"ExecReload":      "/bin/kill -HUP $MAINPID",
	} {
		assert.Equal(t, want, u.get("Service", k), "[Service] %s", k)
	}
	// SIGTERM waits shutdown_grace (30 s by default) for requests; systemd
	// must not SIGKILL before.
	assert.Greater(t, systemdSeconds(t, u.get("Service", "TimeoutStopSec")), 30.0, "TimeoutStopSec")
	execStart := u.get("Service", "ExecStart")
	assert.Regexp(t, `^/usr/local/bin/dtfc serve .*--basedir /var/lib/dtfc( |$)`, execStart)
	assert.Equal(t, "multi-user.target", u.get("Install", "WantedBy"))

	bin := cluster.Binary(t)

	t.Run("dtfc runs as the unit runs it", func(t *testing.T) {
		// ExecStart with the state directory and the options of
		// /etc/default/dtfc replaced; then ExecReload's SIGHUP, then
		// systemd's SIGTERM: the node must go on after the first and exit
		// 0 after the second, well within TimeoutStopSec.
		port := freePort(t)
		opts := fmt.Sprintf("--host 127.0.0.1 --port %d", port)
		line := strings.NewReplacer("/usr/local/bin/dtfc", bin, "/var/lib/dtfc", t.TempDir(), "$DTFC_OPTS", opts).Replace(execStart)
		argv := strings.Fields(line)
		var out lockedBuffer
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				<-done
			}
		})
		url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
		hc := &http.Client{Timeout: time.Second}
		defer hc.CloseIdleConnections()
		healthy := func() bool {
			res, err := hc.Get(url)
			if err != nil {
				return false
			}
			res.Body.Close()
			return res.StatusCode == http.StatusOK
		}
		require.Eventually(t, healthy, 30*time.Second, 50*time.Millisecond, "dtfc did not serve:\n%s", out.String())
		require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
		require.Eventually(t, func() bool { return strings.Contains(out.String(), "SIGHUP: tokens reloaded") }, 30*time.Second, 20*time.Millisecond,
			"dtfc did not handle SIGHUP (systemctl reload):\n%s", out.String())
		require.True(t, healthy(), "dtfc stopped serving after SIGHUP (systemctl reload):\n%s", out.String())
		stop := time.Now()
		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		select {
		case err := <-done:
			require.NoError(t, err, "exit status after SIGTERM:\n%s", out.String())
		case <-time.After(time.Duration(systemdSeconds(t, u.get("Service", "TimeoutStopSec")) * float64(time.Second))):
			t.Fatalf("dtfc still running %s after SIGTERM", u.get("Service", "TimeoutStopSec"))
		}
		t.Logf("stopped %v after SIGTERM", time.Since(stop).Round(time.Millisecond))
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		analyze := need(t, "systemd-analyze", "apt-get install -y systemd")
		dir := t.TempDir()
		// verify checks that ExecStart's program exists and is executable.
		unit := filepath.Join(dir, "dtfc.service")
		require.NoError(t, os.WriteFile(unit, []byte(strings.ReplaceAll(text, "/usr/local/bin/dtfc", bin)), 0o644))
		out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
		// verify exits 0 on unknown keys and bad values, only saying so:
		// any line about the unit is a failure.
		var complaints []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "dtfc.service") {
				complaints = append(complaints, l)
			}
		}
		require.NoError(t, err, "systemd-analyze verify:\n%s", out)
		assert.Empty(t, complaints, "systemd-analyze verify:\n%s", out)

		// The sandbox's score, for the record (systemd >= 250).
		sec, err := exec.Command(analyze, "security", "--offline=yes", unit).CombinedOutput()
		if err != nil {
			t.Logf("systemd-analyze security --offline: %v (older systemd?)", err)
			return
		}
		m := regexp.MustCompile(`Overall exposure level for dtfc.service: ([0-9.]+) (\S+)`).FindStringSubmatch(string(sec))
		require.NotNil(t, m, "%s", sec)
		score, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("systemd-analyze security: exposure %s %s", m[1], m[2])
		assert.LessOrEqual(t, score, 2.0, "the sandbox got weaker:\n%s", sec)
	})
}
