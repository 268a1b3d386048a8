#!/usr/bin/env bash
# How a node's costs grow with its collection (issue 18): one store grown
# to each size in turn (small blobs, written through the blobstore package
# by internal/growth), and at each size, with the real dtfc binary:
#   - start after a clean stop, and after kill -9 (warm page cache, and
#     cold when run as root: caches dropped), to /health answering;
#   - RSS at idle, its peak during the start, and under a load of hits
#     (wrk);
#   - meta.db's size;
#   - a GET hit's latency (wrk -t1 -c1, p50 and p99);
#   - GET /_internal/digests (what an anti-entropy round in sync asks);
#   - a scrub pass, unthrottled and at the default rate (64 MiB/s);
#   - a new replica's join (an empty node whose peer list names the
#     store's node, and whose node's lists it, until it holds every blob:
#     a peer list, not --join, so that the store keeps no membership),
#     up to DTFC_GROWTH_JOIN_MAX blobs (default 100000: a join moves every
#     blob, about 1,000 small ones a second).
# An anti-entropy round with 1% different is a Go benchmark:
#   DTFC_AE_IDS=N go test -run XXX -bench AntiEntropy ./peer/
# Each figure is printed with the growth exponent between sizes
# (log(ratio of figures) / log(ratio of sizes): 0 flat, 1 linear).
#
#   scripts/bench-growth.sh [SIZES...]    default: 10000 100000
#   scripts/bench-growth.sh 10000 100000 1000000   # about 20 more minutes
#
# Needs wrk, curl, python3. The store is kept in $DTFC_GROWTH_DIR (default
# /tmp/dtfc-growth) and grown, not rebuilt, by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000)
for t in wrk curl python3; do command -v $t >/dev/null || { echo "bench-growth: $t is missing" >&2; exit 1; }; done
dir=${DTFC_GROWTH_DIR:-/tmp/dtfc-growth}
mkdir -p "$dir"
bin="$dir/dtfc"; go build -o "$bin" ./cmd/dtfc
join_max=${DTFC_GROWTH_JOIN_MAX:-100000}
port=$((20000 + RANDOM % 20000))
port2=$((port + 1))
pid=""; pid2=""
cleanup() { for p in $pid $pid2; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

now_ms() { date +%s%3N; }
start_node() { # sets ms: how long until /health answers (not in a subshell: it sets pid)
  local t0; t0=$(now_ms)
  "$bin" serve --host 127.0.0.1 --port $port --basedir "$dir/store" --anti-entropy-interval 1h --scrub-interval 0 "$@" >>"$dir/node.log" 2>&1 &
  pid=$!
  until curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
    kill -0 $pid 2>/dev/null || { echo "bench-growth: the node exited; see $dir/node.log" >&2; exit 1; }
    sleep 0.005
  done
  ms=$(( $(now_ms) - t0 ))
}
stop_node() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
kill_node() { kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
drop_caches() { sync; if [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo cold; else echo warm; fi; }
rss_kib() { awk -v k="$2" '$1==k":"{print $2}' /proc/$1/status; }
id_of() { # the ID internal/growth gives blob i
  python3 -c 'import hashlib,struct,sys; i=int(sys.argv[1]); print(hashlib.sha512(struct.pack(">QQ",1,i)+b"\x5a"*1008).hexdigest())' "$1"
}

declare -A fig
for n in "${sizes[@]}"; do
  echo "== $n blobs" >&2
  go run ./internal/growth -dir "$dir/store" -n "$n" >&2
  fig[$n,meta]=$(( $(stat -c %s "$dir/store/meta.db") / 1024 ))
  start_node; fig[$n,clean]=$ms
  sleep 3
  fig[$n,rss]=$(rss_kib $pid VmRSS)
  # The peak so far is the start's: the check reads meta.db through a
  # read-only map (file-backed, released when it ends). Reset it (Linux
  # clear_refs 5) so that the next peak is the load's own.
  fig[$n,hwm_start]=$(rss_kib $pid VmHWM)
  echo 5 >/proc/$pid/clear_refs 2>/dev/null || true
  id=$(id_of 1)
  curl -fs -o /dev/null "http://127.0.0.1:$port/$id" || { echo "bench-growth: blob 1 not served" >&2; exit 1; }
  lat=$(wrk -t1 -c1 -d5s --latency "http://127.0.0.1:$port/$id" | awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} END{print p50, p99}')
  fig[$n,p50]=${lat% *}; fig[$n,p99]=${lat#* }
  wrk -t2 -c32 -d5s "http://127.0.0.1:$port/$id" >/dev/null
  fig[$n,hwm]=$(rss_kib $pid VmHWM)
  d=()
  for _ in 1 2 3 4 5; do d+=($(curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/_internal/digests")); done
  fig[$n,digests]=$(printf '%s\n' "${d[@]}" | sort -n | sed -n 3p | awk '{printf "%.1f", $1*1000}')
  kill_node
  start_node; fig[$n,kill_warm]=$ms
  kill_node
  fig[$n,cache]=$(drop_caches)
  start_node; fig[$n,kill]=$ms
  stop_node
  scrub() { go run ./internal/growth -dir "$dir/store" -n "$n" -scrub "$1" | awk '/scrub pass/{sub(/\(/,""); print $(NF-3)}'; }
  fig[$n,scrub]=$(scrub 0); fig[$n,scrub_rated]=$(scrub $((64 << 20)))
  fig[$n,join]=-
  if [ "$n" -le "$join_max" ]; then
    printf '[[peers]]\nurl = "http://127.0.0.1:%s"\n' $port2 >"$dir/peers-a.toml"
    printf '[[peers]]\nurl = "http://127.0.0.1:%s"\n' $port >"$dir/peers-b.toml"
    start_node --me "http://127.0.0.1:$port" --peerlist "$dir/peers-a.toml"
    rm -rf "$dir/joiner"
    t0=$(now_ms)
    "$bin" serve --host 127.0.0.1 --port $port2 --me "http://127.0.0.1:$port2" --basedir "$dir/joiner" \
      --peerlist "$dir/peers-b.toml" --anti-entropy-interval 5s --scrub-interval 0 >>"$dir/joiner.log" 2>&1 &
    pid2=$!
    deadline=$(( $(now_ms) + 3600000 ))
    until [ "$(curl -fs "http://127.0.0.1:$port2/_status" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["blobs"])' 2>/dev/null)" = "$n" ]; do
      kill -0 $pid2 2>/dev/null || { echo "bench-growth: the joining node exited; see $dir/joiner.log" >&2; exit 1; }
      [ "$(now_ms)" -lt "$deadline" ] || { echo "bench-growth: the join did not finish in an hour" >&2; exit 1; }
      sleep 0.5
    done
    fig[$n,join]=$(( ($(now_ms) - t0) / 1000 ))
    kill "$pid2"; wait "$pid2" 2>/dev/null || true; pid2=""
    stop_node
    rm -rf "$dir/joiner"
  fi
done

exponent() { python3 -c 'import math,sys; a,b,x,y=map(float,sys.argv[1:]); print("%.2f" % (math.log(y/x)/math.log(b/a)) if x>0 and y>0 else "-")' "$@"; }
printf '# dtfc growth, %s, %s cores, %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$(go version | awk '{print $3}')"
printf '%-34s' figure; for n in "${sizes[@]}"; do printf '%14s' "$n"; done; printf '%12s\n' exponent
row() { # name key unit
  printf '%-34s' "$1"; for n in "${sizes[@]}"; do printf '%14s' "${fig[$n,$2]}$3"; done
  first=${sizes[0]}; last=${sizes[${#sizes[@]}-1]}
  if [ "$first" != "$last" ]; then printf '%12s' "$(exponent "$first" "$last" "$(echo "${fig[$first,$2]}" | tr -dc '0-9.')" "$(echo "${fig[$last,$2]}" | tr -dc '0-9.')")"; fi
  echo
}
row "start after a clean stop (ms)" clean ""
row "start after kill -9, warm (ms)" kill_warm ""
row "start after kill -9, ${fig[${sizes[0]},cache]} (ms)" kill ""
row "RSS at idle (KiB)" rss ""
row "peak RSS during the start (KiB)" hwm_start ""
row "peak RSS under hits (KiB)" hwm ""
row "meta.db (KiB)" meta ""
row "GET hit p50" p50 ""
row "GET hit p99" p99 ""
row "GET /_internal/digests (ms)" digests ""
row "scrub pass, no limit (blobs/s)" scrub ""
row "scrub pass at 64 MiB/s (blobs/s)" scrub_rated ""
row "a new replica's join (s)" join ""
