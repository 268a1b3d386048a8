#!/usr/bin/env bash
# Runs every fuzz target for a bounded number of inputs each:
#   scripts/fuzz.sh [budget]     (default 20000x)
#
# The budget is a count (Nx), not a duration, and minimization is off:
# with a duration, Go 1.26's fuzz coordinator can fail a target at the
# deadline with a bare "context deadline exceeded" and no crasher
# (go.dev/issue/75804), which CI hit. A count has no deadline to race.
# Minimizing every new interesting input of FuzzWriter (hundreds of KiB,
# an fsync per run) once took minutes with no progress; a crasher is
# still written, unminimized (go test -run=Fuzz.../<file> replays it).
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-20000x}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "--- $pkg $target ($budget)"
    start=$(date +%s)
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$budget" -fuzzminimizetime 0 "$pkg"
    echo "    $target took $(( $(date +%s) - start ))s"
  done
done
