#!/usr/bin/env bash
# How a node's costs grow with its collection (issue 18): one store grown
# to each size in turn (small blobs, written through the blobstore package
# by internal/growth), and at each size, with the real dtfc binary:
#   - start after a clean stop, and after kill -9 (warm page cache, and
#     cold when run as root: caches dropped), to /health answering;
#   - RSS at idle and its peak under a load of hits (wrk);
#   - meta.db's size;
#   - a GET hit's latency (wrk -t1 -c1, p50 and p99);
#   - GET /_internal/digests (what an anti-entropy round in sync asks).
# Each figure is printed with the growth exponent between sizes
# (log(ratio of figures) / log(ratio of sizes): 0 flat, 1 linear).
#
#   scripts/bench-growth.sh [SIZES...]    default: 10000 100000
#   scripts/bench-growth.sh 10000 100000 1000000   # about 15 more minutes
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
port=$((20000 + RANDOM % 20000))
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; }
trap cleanup EXIT

now_ms() { date +%s%3N; }
start_node() { # sets ms: how long until /health answers (not in a subshell: it sets pid)
  local t0; t0=$(now_ms)
  "$bin" serve --host 127.0.0.1 --port $port --basedir "$dir/store" --anti-entropy-interval 1h --scrub-interval 0 >>"$dir/node.log" 2>&1 &
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
row "peak RSS under hits (KiB)" hwm ""
row "meta.db (KiB)" meta ""
row "GET hit p50" p50 ""
row "GET hit p99" p99 ""
row "GET /_internal/digests (ms)" digests ""
