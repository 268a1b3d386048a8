#!/usr/bin/env bash
# Serving and upload benchmarks of one dtfc node, with baselines measured
# in the same run on the same machine, printed as ratios:
#   - GET requests/s (wrk -t1 -c32) of 1 KiB, 64 KiB, 1 MiB and 10 MiB blobs from
#     dtfc alone, from dtfc behind the shipped nginx front
#     (deploy/nginx.conf), and from plain nginx serving the same
#     <basedir>/blobs (sendfile, the baseline; the same with
#     open_file_cache, as the front's micro-cache has; and that again adding
#     the headers the front adds to a file it sends, "ngx+hdrs": the
#     ceiling of a front bound to answer with dtfc's headers); interleaved rounds, best
#     of each (and each round's own dtfc/nginx and front/nginx, to show how
#     far one run's ratio can move); "pinned": the servers on CPU 0 and wrk on CPU 1 (nginx with
#     one worker), "unpinned": all on both cores (nginx with two); and
#     from internal/minget, the least net/http server that serves the same
#     files (open, http.ServeContent): the ceiling of net/http's response
#     path, against which dtfc's own work shows; and from minget -raw, the
#     same without net/http (HTTP/1.1 parsed and answered by hand): the
#     ceiling of a Go hit path written for this one job;
#   - 4 KiB uploads/s (wrk -t1 -c8, every body different) against
#     internal/minput, a minimal Go server that hashes, writes, fsyncs and
#     renames, side by side;
#   - the upload MB/s of a large file against one-core SHA-512 (go test
#     -bench) and the disk's fsync'd write speed (dd conv=fsync);
#   - the node's peak RSS after uploading and downloading that file;
#   - replication latency on a three-node cluster (scripts/cluster.sh):
#     a 1 MiB upload answered -> held by both other replicas, polled with
#     HEAD /<id>?nopeerload=1 every 2 ms (internal/repllat).
# Needs wrk, nginx, curl and taskset (Debian: apt-get install wrk nginx
# curl util-linux).
#
#   scripts/bench.sh [--quick]     --quick: shorter runs, 256 MiB file
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0; [ "${1:-}" = "--quick" ] && quick=1
dur=6s; big_mib=2048; rounds=3
if [ $quick = 1 ]; then dur=3s; big_mib=256; rounds=2; fi
for t in wrk nginx curl taskset dd; do command -v $t >/dev/null || { echo "bench: $t is missing (apt-get install wrk nginx curl util-linux)" >&2; exit 1; }; done
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 cores (server and client pinned apart)" >&2; exit 1; }

work=$(mktemp -d /tmp/dtfc-bench.XXXXXX)
chmod 755 "$work" # nginx workers run as another user
pids=()
nginx_pids=()
cleanup() {
  for p in "${nginx_pids[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ -d "$work/cluster" ] && DTFC_CLUSTER_DIR="$work/cluster" scripts/cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/dtfc" ./cmd/dtfc
go build -o "$work/minput" ./internal/minput
go build -o "$work/minget" ./internal/minget
go build -o "$work/repllat" ./internal/repllat
port=$((20000 + RANDOM % 20000)); fport=$((port + 1)); nport=$((port + 2)); mport=$((port + 3)); oport=$((port + 5)); gport=$((port + 6)); rport=$((port + 7)); hport=$((port + 8))
"$work/dtfc" serve --host 127.0.0.1 --port $port --basedir "$work/data" 2>"$work/dtfc.log" &
pids+=($!); dtfc_pid=$!
"$work/minput" -addr 127.0.0.1:$mport -dir "$work/minput-data" 2>"$work/minput.log" &
pids+=($!); minput_pid=$!
"$work/minget" -addr 127.0.0.1:$gport -dir "$work/data/blobs" 2>"$work/minget.log" &
pids+=($!); minget_pid=$!
"$work/minget" -raw -addr 127.0.0.1:$rport -dir "$work/data/blobs" 2>"$work/minget-raw.log" &
pids+=($!); rawget_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$mport/" && break; sleep 0.1; done

# start_nginx WORKERS: the shipped front and the plain baseline, started
# afresh with that many workers each.
start_nginx() {
  for p in "${nginx_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  nginx_pids=()
  rm -rf "$work/front" "$work/plain"; mkdir -p "$work/front" "$work/plain"
  sed -e "s|__LISTEN__|127.0.0.1:$fport|" -e "s|__DTFC__|127.0.0.1:$port|" \
      -e "s|__BASEDIR__|$work/data|" -e "s|__RUNDIR__|$work/front|" -e "s|__USER__|$(id -un)|" \
      -e "s|^worker_processes auto;|worker_processes $1; daemon off;|" \
      -e "s|access_log [^;]*;|access_log off;|" deploy/nginx.conf >"$work/front.conf"
  cat >"$work/plain.conf" <<NGINX
worker_processes $1;
pid $work/plain/nginx.pid;
error_log $work/plain/error.log;
daemon off;
events { worker_connections 1024; }
http {
  access_log off; sendfile on; tcp_nopush on;
  server {
    listen 127.0.0.1:$nport;
    location ~ "^/([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{124})\$" {
      root $work/data/blobs;
      try_files /\$1/\$2/\$1\$2\$3 =404;
    }
  }
  server {
    listen 127.0.0.1:$oport;
    open_file_cache max=4096 inactive=10s;
    open_file_cache_valid 1s;
    location ~ "^/([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{124})\$" {
      root $work/data/blobs;
      try_files /\$1/\$2/\$1\$2\$3 =404;
    }
  }
  # The same again with the headers deploy/nginx.conf's @dtfc_file adds
  # (the blobs here are application/octet-stream).
  server {
    listen 127.0.0.1:$hport;
    open_file_cache max=4096 inactive=10s;
    open_file_cache_valid 1s;
    location ~ "^/([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{124})\$" {
      root $work/data/blobs;
      try_files /\$1/\$2/\$1\$2\$3 =404;
      types { }
      default_type application/octet-stream;
      etag off;
      if_modified_since off;
      add_header Last-Modified "";
      add_header ETag "\"\$1\$2\$3\"";
      add_header X-Content-SHA512 \$1\$2\$3;
      add_header Cache-Control "public, max-age=31536000, immutable";
      add_header X-Content-Type-Options nosniff;
      add_header Content-Security-Policy sandbox;
      add_header X-Dtfc-Source local;
    }
  }
}
NGINX
  nginx -c "$work/front.conf" -p "$work/front" 2>>"$work/nginx.log" &
  nginx_pids+=($!)
  nginx -c "$work/plain.conf" -p "$work/plain" 2>>"$work/nginx.log" &
  nginx_pids+=($!)
  for p in $fport $nport $oport $hport; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  done
}

# pin CPUS: every thread of the servers (dtfc, both nginx and their
# workers, minput) onto CPUS.
pin() {
  local p
  for p in $dtfc_pid $minput_pid $minget_pid $rawget_pid "${nginx_pids[@]}" $(pgrep -P "$(echo "${nginx_pids[@]}" | tr ' ' ,)" 2>/dev/null); do
    taskset -apc "$1" "$p" >/dev/null
  done
}

best() { echo "$1 $2" | awk '{print ($1>$2)?$1:$2}'; }
wrk_rps() { # CPUS URL [wrk args...]
  local cpus=$1 url=$2; shift 2
  taskset -c "$cpus" wrk "$@" "$url" | awk '/Requests\/sec/ {print $2}'
}

echo "# dtfc benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(go version | cut -d' ' -f3), $(nginx -v 2>&1 | cut -d' ' -f3)"
echo "# GET: wrk -t1 -c32 -d$dur, $rounds interleaved rounds, best of each; ratios against plain nginx (ngx+ofc: with open_file_cache; net/http: internal/minget; raw Go: minget -raw)"
ids=(); spreads=()
for spec in 1K:1024 64K:65536 1M:1048576 10M:10485760; do
  name=${spec%%:*}; bytes=${spec#*:}
  head -c "$bytes" /dev/urandom >"$work/f$name"
  ids+=("$name:$("$work/dtfc" put --server "http://127.0.0.1:$port" "$work/f$name")")
done
# The response heads' sizes (without Date): ngx+hdrs must send what the
# front sends for a file, or it is no ceiling of it.
head_bytes() { curl -s -D- -o /dev/null "$1" | grep -vi '^date:' | wc -c; }
for mode in pinned unpinned; do
  if [ $mode = pinned ]; then start_nginx 1; pin 0; client=1; else start_nginx 2; pin 0-$(($(nproc) - 1)); client=0-$(($(nproc) - 1)); fi
  echo
  echo "## $mode"
  if [ $mode = pinned ]; then
    id64=$(printf '%s\n' "${ids[@]}" | sed -n 's/^64K://p')
    curl -s -o /dev/null "http://127.0.0.1:$fport/$id64" # the front keeps its answers from the second read on
    echo "the head of a 64 KiB hit, in bytes: front $(head_bytes "http://127.0.0.1:$fport/$id64"), ngx+hdrs $(head_bytes "http://127.0.0.1:$hport/$id64"), nginx $(head_bytes "http://127.0.0.1:$nport/$id64")"
  fi
  printf "%-6s %12s %12s %12s %12s %12s %12s %12s %10s %10s %12s %14s %12s %12s %12s\n" size "dtfc req/s" "front req/s" "nginx req/s" "ngx+ofc" "ngx+hdrs" "net/http" "raw Go" "dtfc/ngx" "front/ngx" "front/ngx+ofc" "front/ngx+hdrs" "net/http/ngx" "dtfc/net/http" "raw Go/ngx"
  for entry in "${ids[@]}"; do
    name=${entry%%:*}; id=${entry#*:}
    for p in $port $fport $nport $oport $hport $gport $rport; do
      [ "$(curl -s "http://127.0.0.1:$p/$id" | sha512sum | cut -c1-128)" = "$id" ] || { echo "bench: port $p does not serve $id" >&2; exit 1; }
    done
    bd=0; bf=0; bn=0; bo=0; bh=0; bg=0; br=0; spread=""
    for _ in $(seq $rounds); do
      d=$(wrk_rps $client "http://127.0.0.1:$port/$id" -t1 -c32 -d"$dur"); bd=$(best "$d" $bd)
      f=$(wrk_rps $client "http://127.0.0.1:$fport/$id" -t1 -c32 -d"$dur"); bf=$(best "$f" $bf)
      g=$(wrk_rps $client "http://127.0.0.1:$nport/$id" -t1 -c32 -d"$dur"); bn=$(best "$g" $bn)
      k=$(wrk_rps $client "http://127.0.0.1:$hport/$id" -t1 -c32 -d"$dur"); bh=$(best "$k" $bh)
      spread+=$(awk -v d="$d" -v f="$f" -v g="$g" -v k="$k" 'BEGIN {printf " %.2f/%.2f/%.2f", d/g, f/g, f/k}')
      bo=$(best "$(wrk_rps $client "http://127.0.0.1:$oport/$id" -t1 -c32 -d"$dur")" $bo)
      bg=$(best "$(wrk_rps $client "http://127.0.0.1:$gport/$id" -t1 -c32 -d"$dur")" $bg)
      br=$(best "$(wrk_rps $client "http://127.0.0.1:$rport/$id" -t1 -c32 -d"$dur")" $br)
    done
    awk -v n="$name" -v d="$bd" -v f="$bf" -v g="$bn" -v o="$bo" -v k="$bh" -v h="$bg" -v r="$br" 'BEGIN {
      printf "%-6s %12.0f %12.0f %12.0f %12.0f %12.0f %12.0f %12.0f %10.2f %10.2f %12.2f %14.2f %12.2f %12.2f %12.2f\n", n, d, f, g, o, k, h, r, d/g, f/g, f/o, f/k, h/g, d/h, r/g }'
    spreads+=("$name:$spread")
  done
  # Each round's own ratios: how far one run's figure can move.
  echo "each round, dtfc/nginx, front/nginx and front/ngx+hdrs:"
  for s in "${spreads[@]}"; do printf "  %-6s%s\n" "${s%%:*}" "${s#*:}"; done
  spreads=()
done

# Small uploads: every request a different 4 KiB body.
cat >"$work/put.lua" <<'LUA'
math.randomseed(os.time())
local tag = tostring(math.random(1, 1e9)) .. "-" .. tostring(os.time())
local filler = string.rep("x", 4096)
local n = 0
request = function()
  n = n + 1
  local p = tag .. "-" .. n .. "-"
  return wrk.format("PUT", "/u" .. n, nil, p .. filler:sub(#p + 1))
end
LUA
# A second node whose store is past 65,536 blobs as far as uploads can
# tell: every shard directory blobs/ab/cd/ exists (an upload to a young
# store mostly creates its own, one more fsync).
mkdir -p "$work/mature/blobs"
(cd "$work/mature/blobs" && for a in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do for b in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do
  mkdir -p $(printf "$a$b/%02x " $(seq 0 255)); done; done)
"$work/dtfc" serve --host 127.0.0.1 --port $((port + 4)) --basedir "$work/mature" 2>"$work/mature.log" &
pids+=($!); mature_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$((port + 4))/health" >/dev/null && break; sleep 0.1; done
pin 0; taskset -apc 0 $mature_pid >/dev/null; bd=0; bo=0; bm=0
for _ in $(seq $rounds); do
  bd=$(best "$(wrk_rps 1 "http://127.0.0.1:$port/" -t1 -c8 -d"$dur" -s "$work/put.lua")" $bd)
  bo=$(best "$(wrk_rps 1 "http://127.0.0.1:$((port + 4))/" -t1 -c8 -d"$dur" -s "$work/put.lua")" $bo)
  bm=$(best "$(wrk_rps 1 "http://127.0.0.1:$mport/" -t1 -c8 -d"$dur" -s "$work/put.lua")" $bm)
done
echo
echo "## uploads of 4 KiB (pinned, wrk -t1 -c8, each body different, fsync'd before the answer)"
awk -v d="$bd" -v o="$bo" -v m="$bm" 'BEGIN {
  printf "dtfc, young store %.0f/s (ratio %.2f); dtfc, every shard directory made %.0f/s (ratio %.2f); minimal Go server %.0f/s\n", d, d/m, o, o/m, m }'

# A large upload against its two limits, measured in the same run.
pin 0-$(($(nproc) - 1))
sha=$(go test -run XXX -bench 'SHA512$' -benchtime 2s ./blobstore/ | awk '/BenchmarkSHA512/ {print $(NF-1)}')
head -c $((big_mib << 20)) /dev/urandom >"$work/big"
sync
id=$(sha512sum "$work/big" | cut -c1-128)
best_up=0; best_dd=0
for _ in 1 2; do
  t=$( { /usr/bin/time -f %e dd if="$work/big" of="$work/dd.out" bs=1M conv=fsync status=none; } 2>&1 )
  best_dd=$(best "$(awk -v s="$t" -v m="$big_mib" 'BEGIN {print m*1.048576/s}')" $best_dd)
  rm -f "$work/dd.out"
  curl -s -o /dev/null -X DELETE "http://127.0.0.1:$port/$id" || true
  t=$( { /usr/bin/time -f %e curl -s -o /dev/null -T "$work/big" "http://127.0.0.1:$port/big.bin" ; } 2>&1 )
  best_up=$(best "$(awk -v s="$t" -v m="$big_mib" 'BEGIN {print m*1.048576/s}')" $best_up)
done
curl -s -o /dev/null "http://127.0.0.1:$port/$id"
hwm=$(awk '/VmHWM/ {print $2}' /proc/$dtfc_pid/status)
echo
echo "## upload of $big_mib MiB (curl -T, fsync'd before the answer; unpinned)"
awk -v u="$best_up" -v s="$sha" -v d="$best_dd" 'BEGIN {
  lim = (s < d) ? s : d
  printf "dtfc %.0f MB/s; one-core SHA-512 %.0f MB/s; dd conv=fsync %.0f MB/s; ratio to the slower %.2f\n", u, s, d, u/lim }'
echo "peak RSS of the node after uploading and downloading it: $((hwm / 1024)) MiB"

# Replication latency on three nodes (unpinned).
cport=$((port + 10))
DTFC_CLUSTER_DIR="$work/cluster" DTFC_BASE_PORT=$cport scripts/cluster.sh start >"$work/cluster.log" 2>&1
n=200; [ $quick = 1 ] && n=50
echo
echo "## replication, 3 nodes on loopback (unpinned)"
"$work/repllat" -n $n -size 1048576 http://127.0.0.1:$cport http://127.0.0.1:$((cport + 1)) http://127.0.0.1:$((cport + 2))
