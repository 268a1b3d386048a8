#!/usr/bin/env bash
# Several sources against one: a miss of a 48 MiB blob on a cache whose
# links to three holders are throttled to 12 MB/s each, taken in pieces
# from all three (the default) against from one holder at a time
# (--peer-fetch-sources 1), in one cluster of real processes, a new blob
# each round, the two caches' order alternating. Prints each one's rate
# against one link's, and their ratio (issue 14 asks for >= 2.5).
#
#   scripts/bench-sources.sh [rounds]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# dtfc several-sources benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
go test -run XXX -bench MissSources -benchtime "${1:-3}x" ./e2e/ | grep -E '^Benchmark|^ok|FAIL'
