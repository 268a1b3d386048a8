#!/usr/bin/env bash
# Archive benchmarks (issue 13, item 7), real dtfc processes against
# versitygw on loopback (internal/versitygw; installed by .ci/run into
# ~/.cache/dtfc-tools, or $DTFC_VERSITYGW), each against a baseline
# measured in the same run:
#   (a) upload -> on-archive latency: from an upload's 201 to its state
#       record being listed in the bucket, p50/p99 over 100 uploads of
#       1 MiB, against a plain 1 MiB PutObject to the same server
#       (interleaved);
#   (b) a 1 GiB miss served from the archive (GET on a new node whose only
#       peer is the bucket: read, verified, stored, served) against a
#       plain GetObject of the same object, alternating; ratio of rates
#       (issue 13 asks >= 0.8);
#   (c) the relay's delay, upload on A -> held by B, whose only common
#       peer is the bucket, archive_interval at its default (10s) and 1s
#       (pairs alternating, each upload after a random pause within the
#       interval), against the interval.
#
#   scripts/bench-archive.sh [miss-rounds] [relay-rounds]   (default 3 6)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# dtfc archive benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, versitygw $(sed -n 's/^const Version = "\(.*\)"/\1/p' internal/versitygw/versitygw.go)"
go test -c -o /tmp/dtfc-bench-archive.test ./e2e/
trap 'rm -f /tmp/dtfc-bench-archive.test' EXIT
run() { (cd e2e && /tmp/dtfc-bench-archive.test -test.run XXX -test.bench "$1" -test.benchtime "$2" -test.timeout 60m) | grep -E '^Benchmark|FAIL|SKIP|skip' || true; }
run 'ArchiveOnArchive$' 1x
run 'ArchiveMiss$' "${1:-3}x"
run 'ArchiveRelay$' "${2:-6}x"
