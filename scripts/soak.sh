#!/usr/bin/env bash
# The chaos soak (package soak): a seeded schedule of uploads, deletes,
# blocks, lifts and reads, kills, partitions, latency, corruption, a full
# disk, a join, outages longer than the tombstone retention, clock skews
# and bit flips on disk against a cluster of real dtfc processes (caches
# included), then the invariants of API.md "Consistency" checked after
# every round, every node's state of every ID against a model.
#
#   scripts/soak.sh --short                  # about 3 minutes, 5 nodes (CI)
#   scripts/soak.sh                          # 30 minutes of chaos, 7 nodes
#   scripts/soak.sh --seed N [--short] ...   # replay a seed (same flags)
#   scripts/soak.sh --duration 10m --round 2m --nodes 5 --workers 4 --caches 1
#   scripts/soak.sh --short --sabotage       # self-tests: must fail, each caught
#   scripts/soak.sh --short --sabotage=lost,undone   # some of them (archive: with --archive)
#   scripts/soak.sh --short --keep-going     # all rounds, even after violations
#   scripts/soak.sh --no-list-self --no-list-twice   # plain peer lists
#   scripts/soak.sh --no-leave               # no member leaves and comes back
#   scripts/soak.sh --short --archive        # an S3 archive peer (versitygw): its
#                                            # outages, a node fed only by the bucket,
#                                            # the last replica a tier (max_bytes)
#
# Prints the seed first, then the report; on a violation, the events that
# matter and the replay command, and exits non-zero. The event log, plan
# and report (and on a failure every node's log) are kept in
# $TMPDIR/dtfc-soak-<seed>/, the full go test output in
# $TMPDIR/dtfc-soak-<seed>.out.
set -euo pipefail
cd "$(dirname "$0")/.."

short=0 sabotage="" seed="" duration="" round="" nodes="" workers="" caches="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --short) short=1 ;;
    --sabotage) sabotage=all ;;
    --sabotage=*) sabotage=${1#*=} ;;
    --keep-going|--no-list-self|--no-list-twice|--no-leave|--archive) extra+=("-${1#--}") ;;
    --caches) caches=$2; shift ;;
    --caches=*) caches=${1#*=} ;;
    --seed) seed=$2; shift ;;
    --seed=*) seed=${1#*=} ;;
    --duration) duration=$2; shift ;;
    --duration=*) duration=${1#*=} ;;
    --round) round=$2; shift ;;
    --round=*) round=${1#*=} ;;
    --nodes) nodes=$2; shift ;;
    --nodes=*) nodes=${1#*=} ;;
    --workers) workers=$2; shift ;;
    --workers=*) workers=${1#*=} ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# minutes DURATION: a Go duration ("30m", "1h30m", "90s") in whole
# minutes, rounded up.
minutes() {
  local d=$1 secs=0 n u
  while [[ $d =~ ^([0-9]+)(h|m|s)(.*)$ ]]; do
    n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]} d=${BASH_REMATCH[3]}
    case $u in h) secs=$((secs + n * 3600)) ;; m) secs=$((secs + n * 60)) ;; s) secs=$((secs + n)) ;; esac
  done
  [ -z "$d" ] || { echo "soak.sh: cannot read the duration $1 (use h, m, s)" >&2; exit 2; }
  echo $(( (secs + 59) / 60 ))
}

if [ -z "$seed" ]; then
  seed=$(( ($(date +%s%N) / 1000) % 1000000000 ))
fi
echo "soak: seed $seed"

args=(-run '^TestSoak$' -count=1 -v -soak -seed "$seed")
if [ "$short" = 1 ]; then
  args+=(-short -timeout 15m)
else
  : "${duration:=30m}" "${nodes:=7}"
  # Chaos time, plus the converge and check after each round, plus
  # building and tearing down.
  args+=(-timeout "$(( $(minutes "$duration") * 2 + 30 ))m")
fi
[ -n "$duration" ] && args+=(-duration "$duration")
[ -n "$round" ] && args+=(-round "$round")
[ -n "$nodes" ] && args+=(-nodes "$nodes")
[ -n "$workers" ] && args+=(-workers "$workers")
[ -n "$caches" ] && args+=(-caches "$caches")
[ -n "$sabotage" ] && args+=("-sabotage=$sabotage")
args+=("${extra[@]}")

out="${TMPDIR:-/tmp}/dtfc-soak-$seed.out"
status=0
go test ./soak/ "${args[@]}" >"$out" 2>&1 || status=$?

# The report: the soak's own lines, the harness's complaints, the verdict.
grep -E 'soak: |cluster: |^(--- (PASS|FAIL|SKIP)|PASS$|FAIL|ok |panic:)' "$out" \
  | grep -v 'soak: seed [0-9]*$' \
  | sed -E 's/^ +[a-z_]+\.go:[0-9]+: //' || true
if [ "$status" != 0 ]; then
  echo "soak: FAILED (exit $status), seed $seed; full output in $out"
  exit "$status"
fi
echo "soak: passed, seed $seed; full output in $out"
