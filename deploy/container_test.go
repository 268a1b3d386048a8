package deploy_test

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// instruction is one instruction of a Containerfile.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is one build stage: its FROM and what follows.
type stage struct {
	from  string // image
	name  string // AS name
	instr []instruction
}

// parseContainerfile splits a Containerfile into stages of instructions,
// joining continued lines and dropping comments.
func parseContainerfile(t *testing.T, text string) []stage {
	t.Helper()
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			return
		}
		require.NotEmpty(t, stages, "line %d: %s before any FROM", start, in.cmd)
		stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, in)
	}
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 {
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			start = i + 1
		} else if strings.HasPrefix(trimmed, "#") {
			continue // a comment inside a continued instruction
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instr {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// TestContainerfile checks deploy/Containerfile without a container
// engine (none runs here): its shape, then its build command, run on this
// machine, must give a static binary that reports the stamped version.
func TestContainerfile(t *testing.T) {
	stages := parseContainerfile(t, readRepoFile(t, "deploy", "Containerfile"))
	require.Len(t, stages, 2, "a builder stage and a final stage")
	build, final := stages[0], stages[1]

	assert.True(t, strings.HasPrefix(build.from, "golang:1.26"), "builder: %s", build.from)
	var buildCmd string
	for _, in := range build.all("RUN") {
		if strings.Contains(in.args, "go build") {
			buildCmd = in.args
		}
	}
	require.NotEmpty(t, buildCmd, "no RUN go build in the builder stage")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, "./cmd/dtfc"} {
		assert.Contains(t, buildCmd, want)
	}
	assert.NotEmpty(t, build.all("ARG"), "ARG VERSION")

	assert.True(t, strings.HasPrefix(final.from, "gcr.io/distroless/static") || final.from == "scratch",
		"the final stage is distroless static or scratch, not %s", final.from)
	users := final.all("USER")
	require.NotEmpty(t, users, "the final stage sets USER")
	u := users[len(users)-1].args
	name, _, _ := strings.Cut(u, ":")
	assert.NotContains(t, []string{"root", "0", ""}, name, "USER %s runs as root", u)
	if strings.HasSuffix(final.from, ":nonroot") {
		assert.True(t, name == "65532" || name == "nonroot", "distroless's nonroot user is 65532")
	}
	exposes := final.all("EXPOSE")
	require.Len(t, exposes, 1)
	assert.Equal(t, "8080", exposes[0].args)
	volumes := final.all("VOLUME")
	require.Len(t, volumes, 1)
	assert.Equal(t, "/data", volumes[0].args)
	entry := final.all("ENTRYPOINT")
	require.Len(t, entry, 1)
	var argv []string
	require.NoError(t, json.Unmarshal([]byte(entry[0].args), &argv), "ENTRYPOINT in exec (JSON) form")
	assert.Equal(t, []string{"/usr/local/bin/dtfc", "serve", "--basedir", "/data"}, argv)
	var copied bool
	for _, in := range final.all("COPY") {
		if strings.HasSuffix(in.args, " /data") {
			assert.Contains(t, in.args, "--chown=65532:65532", "the volume's mount point belongs to the user")
			copied = true
		}
	}
	assert.True(t, copied, "/data is created owned by the non-root user")

	t.Run("build command", func(t *testing.T) {
		if testing.Short() {
			t.Skip("-short: not building")
		}
		if runtime.GOOS != "linux" {
			t.Skip("the image is linux")
		}
		out := t.TempDir()
		const version = "v9.9.9-container-test"
		sh := strings.NewReplacer("${VERSION}", version, "/out/", out+"/").Replace(buildCmd)
		cmd := exec.Command("sh", "-c", sh)
		cmd.Dir = repoFile()
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+runtime.GOARCH)
		b, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s\n%s", sh, b)
		bin := filepath.Join(out, "dtfc")

		f, err := elf.Open(bin)
		require.NoError(t, err)
		defer f.Close()
		for _, p := range f.Progs {
			assert.NotEqual(t, elf.PT_INTERP, p.Type, "a dynamic loader: not a static binary")
		}
		libs, _ := f.ImportedLibraries()
		assert.Empty(t, libs, "shared libraries needed")
		assert.Nil(t, f.Section(".symtab"), "symbols not stripped (-s)")
		assert.Nil(t, f.Section(".debug_info"), "DWARF not stripped (-w)")

		v, err := exec.Command(bin, "version").Output()
		require.NoError(t, err)
		assert.Equal(t, "dtfc "+version, strings.TrimSpace(string(v)))
	})
}
