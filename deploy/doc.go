// Package deploy holds what it takes to run dtfc in production, and the
// tests that prove each piece against the real component:
//
//   - nginx.conf: nginx in front of a node, serving hits from
//     <basedir>/blobs with dtfc's headers (X-Accel-Redirect), the rest
//     proxied (nginx_test.go, real nginx);
//   - dtfc.service: a hardened systemd unit (systemd_test.go,
//     systemd-analyze verify);
//   - Containerfile: a static binary in a distroless, non-root image
//     (container_test.go, checked statically and by running its build
//     command);
//   - the status page at GET / rendered in headless Chromium against a
//     real three-node cluster (statuspage_test.go);
//   - a page's fetch() uploads and reads, in headless Chromium, against a
//     real node with cors_origins, and is refused for an origin not
//     listed (cors_test.go);
//   - grafana-dashboard.json, a Grafana dashboard of the exported
//     metrics: grafana_test.go checks every metric it reads against a
//     real two-node cluster's /metrics;
//   - the release builds of ../.goreleaser.yaml (release_test.go, through
//     ../scripts/release-check.sh).
//
// The package has no code of its own: it is a directory of files to copy
// and the tests that keep them honest.
package deploy
