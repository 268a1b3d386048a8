package deploy_test

import (
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// goreleaserConfig is the part of .goreleaser.yaml the release depends on.
type goreleaserConfig struct {
	Version int `yaml:"version"`
	Builds  []struct {
		ID      string   `yaml:"id"`
		Main    string   `yaml:"main"`
		Binary  string   `yaml:"binary"`
		Env     []string `yaml:"env"`
		Goos    []string `yaml:"goos"`
		Goarch  []string `yaml:"goarch"`
		Flags   []string `yaml:"flags"`
		Ldflags []string `yaml:"ldflags"`
		Ignore  []any    `yaml:"ignore"`
	} `yaml:"builds"`
}

// TestReleaseBuilds checks .goreleaser.yaml (static builds of ./cmd/dtfc
// for linux and darwin on amd64 and arm64, version stamped), then runs
// scripts/release-check.sh, which cross-compiles that matrix with the same
// flags and checks every binary.
func TestReleaseBuilds(t *testing.T) {
	var conf goreleaserConfig
	require.NoError(t, yaml.Unmarshal([]byte(readRepoFile(t, ".goreleaser.yaml")), &conf))
	assert.Equal(t, 2, conf.Version, "GoReleaser v2 configuration")
	require.Len(t, conf.Builds, 1)
	b := conf.Builds[0]
	assert.Equal(t, "./cmd/dtfc", b.Main)
	assert.Equal(t, "dtfc", b.Binary)
	assert.Contains(t, b.Env, "CGO_ENABLED=0", "static binaries")
	assert.Contains(t, b.Flags, "-trimpath")
	require.Len(t, b.Ldflags, 1)
	assert.Equal(t, "-s -w -X main.version={{.Version}}", b.Ldflags[0])
	assert.Empty(t, b.Ignore)
	var want []string
	for _, os := range b.Goos {
		for _, arch := range b.Goarch {
			want = append(want, os+"/"+arch)
		}
	}
	slices.Sort(want)
	assert.Equal(t, []string{"darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"}, want)

	script := readRepoFile(t, "scripts", "release-check.sh")
	m := regexp.MustCompile(`(?m)^targets=\(([^)]*)\)`).FindStringSubmatch(script)
	require.NotNil(t, m, "scripts/release-check.sh: no targets=(...) line")
	scripted := strings.Fields(m[1])
	slices.Sort(scripted)
	assert.Equal(t, want, scripted, "scripts/release-check.sh builds another matrix than .goreleaser.yaml")
	assert.Contains(t, script, `-trimpath -ldflags "-s -w -X main.version=$version"`)
	assert.Contains(t, script, "CGO_ENABLED=0")

	if testing.Short() {
		t.Skip("-short: not cross-compiling")
	}
	bash := need(t, "bash", "apt-get install -y bash")
	start := time.Now()
	cmd := exec.Command(bash, repoFile("scripts", "release-check.sh"), "v0.0.0-test")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "scripts/release-check.sh:\n%s", out)
	t.Logf("scripts/release-check.sh in %v:\n%s", time.Since(start).Round(time.Second), out)
	for _, target := range want {
		assert.Regexp(t, `(?m)^ok `+regexp.QuoteMeta(target)+` \d+$`, string(out))
	}
}
