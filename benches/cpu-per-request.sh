#!/usr/bin/env bash
# CPU per HTTP read, server side: hayloft and nginx (one file per blob) serve
# the same 4 KiB blobs to the same wrk load; user and system CPU of each
# server's processes (from /proc/<pid>/stat) are divided by the requests
# served. A figure that does not depend on how the machine's cores are
# shared with the load generator, unlike the req/s ratios of compare.sh.
#
# Usage: benches/cpu-per-request.sh [BLOBS] [SECONDS] [ROUNDS]
#   (defaults: 10000 blobs, 10 s a run, 3 alternating rounds)
# HAYLOFT=/path/to/hayloft uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

BLOBS=${1:-10000}
SECONDS_PER_RUN=${2:-10}
ROUNDS=${3:-3}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (benches/compare.sh installs it)" >&2; exit 1; }
done
if [ -z "${HAYLOFT:-}" ]; then
  cargo build --release -q -p hayloft --bin hayloft
  HAYLOFT=$PWD/target/release/hayloft
fi

WORK=$(mktemp -d)
cleanup() {
  [ -n "${HAYLOFT_PID:-}" ] && kill "$HAYLOFT_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
source benches/lib.sh
NGINX_PORT=$(free_port); DIR_PORT=$(free_port); GRPC_PORT=$(free_port); HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)

write_blobs "$WORK/files" "$BLOBS"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile 65536;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  open_file_cache max=20000 inactive=60s;
  server { listen 127.0.0.1:$NGINX_PORT; root $WORK/files; }
}
CONF
chmod -R a+rX "$WORK"
nginx -c "$WORK/nginx.conf"
serve_blobs
find "$WORK/files" -name "*.bin" -exec cat {} + > /dev/null

# Summed user and system clock ticks of the pids given.
ticks() { for p in "$@"; do awk '{print $14, $15}' "/proc/$p/stat"; done | awk '{u+=$1; s+=$2} END {print u+0, s+0}'; }
hz=$(getconf CLK_TCK)
measure() { # name url paths pids...
  local name=$1 url=$2 paths=$3; shift 3
  wrk -t2 -c64 -d2s -s "$WORK/random.lua" "$url" -- "$paths" > /dev/null
  read -r u0 s0 < <(ticks "$@")
  local out; out=$(wrk -t2 -c64 -d${SECONDS_PER_RUN}s -s "$WORK/random.lua" "$url" -- "$paths")
  read -r u1 s1 < <(ticks "$@")
  local n; n=$(echo "$out" | awk '/requests in/ {print $1}')
  python3 -c "import sys; n,u,s,hz=map(float,sys.argv[1:5]); print(f'{sys.argv[5]:14} {n/$SECONDS_PER_RUN:9.0f} req/s  user {u*1e6/hz/n:6.2f} us  system {s*1e6/hz/n:6.2f} us  total {(u+s)*1e6/hz/n:6.2f} us per request')" \
    "$n" "$((u1 - u0))" "$((s1 - s0))" "$hz" "$name"
}
echo "4 KiB blobs: $BLOBS, wrk -t2 -c64 -d${SECONDS_PER_RUN}s, $ROUNDS rounds, $(nproc) cores"
for round in $(seq "$ROUNDS"); do
  measure hayloft "http://127.0.0.1:$HTTP_PORT" "$WORK/hayloft-paths.txt" "$HAYLOFT_PID"
  measure nginx-per-file "http://127.0.0.1:$NGINX_PORT" "$WORK/nginx-paths.txt" $(pgrep -f "nginx: worker process" -P "$(cat "$WORK/nginx.pid")")
done
