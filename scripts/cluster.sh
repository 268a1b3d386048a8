#!/usr/bin/env bash
# Start (or stop) a three-node local dtfc cluster on 127.0.0.1.
#
#   scripts/cluster.sh [start]   build dtfc, start nodes on ports 8081-8083
#   scripts/cluster.sh stop      stop them (by the PIDs this script saved)
#   scripts/cluster.sh status    show each node's /_status
#
# Node 0 starts alone; nodes 1 and 2 join it (--join): no peer list file.
# State lives in $DTFC_CLUSTER_DIR (default ./dtfc-cluster): one basedir,
# one log file and one PID file per node.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DTFC_CLUSTER_DIR:-./dtfc-cluster}
base_port=${DTFC_BASE_PORT:-8081}
ports=($base_port $((base_port + 1)) $((base_port + 2)))
cmd=${1:-start}

stop() {
  for i in 0 1 2; do
    pidfile="$dir/node$i.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
  echo "stopped"
}

case "$cmd" in
start)
  mkdir -p "$dir"
  go build -o "$dir/dtfc" ./cmd/dtfc
  for i in 0 1 2; do
    p=${ports[$i]}
    if [ -f "$dir/node$i.pid" ] && kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
      echo "node$i already running"; continue
    fi
    join=()
    [ "$i" = 0 ] || join=(--join "http://127.0.0.1:${ports[0]}")
    "$dir/dtfc" serve --host 127.0.0.1 --port "$p" --me "http://127.0.0.1:$p" \
      --basedir "$dir/node$i" "${join[@]}" \
      --anti-entropy-interval 10s >"$dir/node$i.log" 2>&1 &
    echo $! > "$dir/node$i.pid"
    for _ in $(seq 100); do
      curl -fsS "http://127.0.0.1:$p/health" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$p/health" >/dev/null || { echo "node on port $p did not start; see $dir/node$i.log" >&2; exit 1; }
  done
  # Every node knows the two others once the joins have spread (seconds).
  for p in "${ports[@]}"; do
    for _ in $(seq 150); do
      [ "$(curl -fsS "http://127.0.0.1:$p/_members" 2>/dev/null | grep -o '"url"' | wc -l)" -ge 3 ] && break
      sleep 0.1
    done
  done
  echo "three nodes up (1 and 2 joined 0); status pages:"
  for p in "${ports[@]}"; do echo "  http://127.0.0.1:$p/"; done
  echo "try: $dir/dtfc put --server http://127.0.0.1:${ports[0]} README.md"
  echo "stop with: $0 stop"
  ;;
stop) stop ;;
status)
  for p in "${ports[@]}"; do curl -fsS "http://127.0.0.1:$p/_status"; echo; done
  ;;
*) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
