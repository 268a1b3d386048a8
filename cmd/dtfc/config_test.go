package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestExampleConfig keeps dtfc.toml.example valid and equal to the
// defaults it documents.
func TestExampleConfig(t *testing.T) {
	c, err := loadConfig([]string{"--config", "../../dtfc.toml.example"})
	require.NoError(t, err)
	d := defaultConfig()
	require.NoError(t, d.validate())
	assert.Equal(t, d, c)
}

func TestLoadConfig(t *testing.T) {
	write := func(t *testing.T, body string) string {
		p := filepath.Join(t.TempDir(), "dtfc.toml")
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	tests := []struct {
		name    string
		file    string
		args    []string
		check   func(*testing.T, Config)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			assert.Equal(t, 8080, c.Port)
			assert.Equal(t, dtfc.RoleReplica, c.Role)
			assert.Equal(t, 60*time.Second, time.Duration(c.IdleTimeout))
			assert.NotEmpty(t, c.Me)
		}},
		{name: "me from host and port", args: []string{"--host", "127.0.0.1", "-p", "9000"}, check: func(t *testing.T, c Config) {
			assert.Equal(t, "http://127.0.0.1:9000", c.Me)
		}},
		{name: "file and flags", file: "port = 9001\nrole = \"cache\"\nmax_bytes = \"1GiB\"\nidle_timeout = \"1.5s\"\n", args: []string{"--port", "9002"},
			check: func(t *testing.T, c Config) {
				assert.Equal(t, 9002, c.Port, "flags win")
				assert.Equal(t, dtfc.RoleCache, c.Role)
				assert.EqualValues(t, 1<<30, c.MaxBytes)
				assert.Equal(t, 1500*time.Millisecond, time.Duration(c.IdleTimeout))
			}},
		{name: "sizes", args: []string{"--max-upload-bytes", "10MB"}, check: func(t *testing.T, c Config) {
			assert.EqualValues(t, 10_000_000, c.MaxUploadBytes)
		}},
		{name: "unknown key", file: "port = 1\n\ncolour = \"blue\"\n", wantErr: `line 3: unknown key "colour"`},
		{name: "bad duration", file: "idle_timeout = \"soon\"\n", wantErr: "not a duration"},
		{name: "bad size", args: []string{"--max-bytes", "lots"}, wantErr: "not a size"},
		{name: "bad role", args: []string{"--role", "leader"}, wantErr: `role "leader"`},
		{name: "max_bytes on a replica without a peer list", args: []string{"--max-bytes", "1GB"}, wantErr: "needs an archive"},
		{name: "max_bytes on a replica with a peer list", args: []string{"--max-bytes", "1GB", "--peerlist", "p.toml"}, check: func(t *testing.T, c Config) {
			assert.EqualValues(t, 1_000_000_000, c.MaxBytes) // the list's archive is checked at start (peer.New)
		}},
		{name: "bad me", args: []string{"--me", "ftp://x"}, wantErr: "want a URL"},
		{name: "bad port", args: []string{"--port", "70000"}, wantErr: "port 70000"},
		{name: "zero interval", file: "anti_entropy_interval = \"0s\"\n", wantErr: "anti_entropy_interval must be positive"},
		{name: "syntax", file: "port = = 1\n", wantErr: "line 1"},
		{name: "stray argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
		{name: "auth_token, peers, no secret", file: "auth_token = \"w\"\npeerlist = \"p.toml\"\n", wantErr: "auth_token is set but cluster_secret is not"},
		{name: "auth_token and peers with a secret", file: "auth_token = \"w\"\npeerlist = \"p.toml\"\ncluster_secret = \"s\"\n", check: func(t *testing.T, c Config) {
			assert.False(t, c.internalHidden())
		}},
		{name: "auth_token alone", args: []string{"--auth-token", "w"}, check: func(t *testing.T, c Config) {
			assert.True(t, c.internalHidden(), "no peers, no secret: /_internal is not served")
		}},
		{name: "read_token, peers, no secret", args: []string{"--read-token", "r", "--peerlist", "p.toml"}, wantErr: "read_token is set but cluster_secret is not"},
		{name: "read_token alone", args: []string{"--read-token", "r"}, check: func(t *testing.T, c Config) {
			assert.True(t, c.internalHidden())
		}},
		{name: "no token", args: []string{"--peerlist", "p.toml"}, check: func(t *testing.T, c Config) {
			assert.False(t, c.internalHidden())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", write(t, tt.file)}, args...)
			}
			c, err := loadConfig(args)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

func FuzzConfigFile(f *testing.F) {
	data, err := os.ReadFile("../../dtfc.toml.example")
	require.NoError(f, err)
	for _, s := range []string{string(data), "", "port = 1", "max_bytes = \"1.5GiB\"", "idle_timeout = \"-1s\"", "[x]\ny=1", "port = 99999999999999999999"} {
		f.Add(s)
	}
	// One file per fuzzing process, rewritten for each input: a fresh
	// t.TempDir per input spends the time creating and removing
	// directories (the workers sat at 100% system time, 0 execs/s).
	p := filepath.Join(f.TempDir(), "c.toml")
	f.Fuzz(func(t *testing.T, in string) {
		if err := os.WriteFile(p, []byte(in), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := loadConfig([]string{"--config", p})
		if err != nil {
			return
		}
		// Whatever is accepted is valid.
		if c.Port < 0 || c.Port > 65535 || (c.Role != "replica" && c.Role != "cache") || c.IdleTimeout <= 0 || c.Me == "" {
			t.Fatalf("accepted an invalid config: %+v", c)
		}
	})
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"0": 0, "1024": 1024, "1KiB": 1024, "1kb": 1000, "1.5MiB": 1572864, "2G": 2e9, "3TiB": 3 << 40, " 7 B ": 7,
	} {
		got, err := ParseByteSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "-1", "1XB", "MiB", "1.2.3"} {
		_, err := ParseByteSize(in)
		assert.Error(t, err, in)
	}
}
