#!/usr/bin/env bash
# Serving and upload benchmarks of one dtfc node, with baselines measured
# in the same run on the same machine:
#   - GET requests/s and MB/s (wrk) of dtfc and of nginx serving the same
#     <basedir>/blobs, for 1 KiB, 64 KiB and 10 MiB files, interleaved;
#   - upload MB/s of a large file against raw SHA-512 speed (go test -bench);
#   - peak RSS (VmHWM) of the node after uploading and downloading a large
#     file.
# Needs wrk and nginx (Debian: apt-get install wrk nginx).
#
#   scripts/bench.sh [--quick]     --quick: shorter runs, 256 MiB file
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0; [ "${1:-}" = "--quick" ] && quick=1
dur=10s; big_mib=2048; rounds=3
if [ $quick = 1 ]; then dur=3s; big_mib=256; rounds=2; fi
for t in wrk nginx curl; do command -v $t >/dev/null || { echo "bench: $t is missing (apt-get install wrk nginx curl)" >&2; exit 1; }; done

work=$(mktemp -d /tmp/dtfc-bench.XXXXXX)
chmod 755 "$work" # nginx workers run as another user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/dtfc" ./cmd/dtfc
port=$((20000 + RANDOM % 20000)); nport=$((port + 1))
"$work/dtfc" serve --host 127.0.0.1 --port $port --basedir "$work/data" 2>"$work/dtfc.log" &
pids+=($!); dtfc_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
daemon off;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  server {
    listen 127.0.0.1:$nport;
    location ~ "^/([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{124})\$" {
      root $work/data/blobs;
      try_files /\$1/\$2/\$1\$2\$3 =404;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$nport/" && break; sleep 0.1; done

echo "# dtfc benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(go version | cut -d' ' -f3)"
echo "# wrk -t2 -c32 -d$dur, $rounds interleaved rounds, best round of each"
printf "%-8s %14s %14s %8s %12s %12s %8s\n" size "dtfc req/s" "nginx req/s" ratio "dtfc MB/s" "nginx MB/s" ratio
for spec in 1K:1024 64K:65536 10M:10485760; do
  name=${spec%%:*}; bytes=${spec#*:}
  head -c "$bytes" /dev/urandom >"$work/f$name"
  id=$("$work/dtfc" put --server "http://127.0.0.1:$port" "$work/f$name")
  [ "$(curl -s "http://127.0.0.1:$nport/$id" | sha512sum | cut -c1-128)" = "$id" ] || { echo "nginx does not serve $id" >&2; exit 1; }
  best_d=0; best_n=0
  for _ in $(seq $rounds); do
    for who in d n; do
      p=$port; [ $who = n ] && p=$nport
      r=$(wrk -t2 -c32 -d"$dur" "http://127.0.0.1:$p/$id" | awk '/Requests\/sec/ {print $2}')
      if [ $who = d ]; then best_d=$(echo "$r $best_d" | awk '{print ($1>$2)?$1:$2}'); else best_n=$(echo "$r $best_n" | awk '{print ($1>$2)?$1:$2}'); fi
    done
  done
  awk -v n="$name" -v d="$best_d" -v g="$best_n" -v b="$bytes" 'BEGIN {
    printf "%-8s %14.0f %14.0f %8.2f %12.1f %12.1f %8.2f\n", n, d, g, d/g, d*b/1e6, g*b/1e6, d/g }'
done

sha=$(go test -run XXX -bench 'SHA512$' -benchtime 2s ./blobstore/ | awk '/BenchmarkSHA512/ {print $(NF-1)}')
head -c $((big_mib << 20)) /dev/urandom >"$work/big"
sync
best=0
for _ in 1 2; do
  rm -rf "$work/data2"; # a fresh node each time would cost a restart: delete instead
  id=$(sha512sum "$work/big" | cut -c1-128)
  curl -s -o /dev/null -X DELETE "http://127.0.0.1:$port/$id" || true
  t=$( { /usr/bin/time -f %e curl -s -o /dev/null -T "$work/big" "http://127.0.0.1:$port/big.bin" ; } 2>&1 )
  mbs=$(awk -v s="$t" -v m="$big_mib" 'BEGIN {print m*1.048576/s}')
  best=$(echo "$mbs $best" | awk '{print ($1>$2)?$1:$2}')
done
curl -s -o /dev/null "http://127.0.0.1:$port/$id"
hwm=$(awk '/VmHWM/ {print $2}' /proc/$dtfc_pid/status)
echo
echo "upload of $big_mib MiB (curl -T, fsync'd before the answer): $(printf %.0f "$best") MB/s; raw SHA-512: $sha MB/s; ratio $(awk -v a="$best" -v b="$sha" 'BEGIN {printf "%.2f", a/b}')"
echo "peak RSS of the node after uploading and downloading it: $((hwm / 1024)) MiB"
