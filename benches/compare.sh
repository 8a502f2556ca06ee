#!/usr/bin/env bash
# Side-by-side HTTP read benchmark on this machine, in one run, with the same
# load generator (wrk) and the same blob set:
#   1. nginx serving the blobs as one file each (the "filesystem" baseline);
#   2. nginx serving one 4 KiB blob again and again from memory (the HTTP
#      ceiling here);
#   3. hayloft serving the same blobs from its volumes.
# Prints requests/s for each and the ratios.
#
# Usage: benches/compare.sh [BLOBS] [SECONDS]   (defaults: 10000 blobs, 10 s)
# Installs nginx-light and wrk if missing; builds hayloft in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

BLOBS=${1:-10000}
SECONDS_PER_RUN=${2:-10}
THREADS=2
CONNECTIONS=64

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
bash scripts/setup.sh
cargo build --release -q -p hayloft -p hayloft-benches --bin hayloft --bin upload-ceiling
HAYLOFT=$PWD/target/release/hayloft
UPLOAD_CEILING=$PWD/target/release/upload-ceiling

WORK=$(mktemp -d)
cleanup() {
  [ -n "${HAYLOFT_PID:-}" ] && kill "$HAYLOFT_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port); DIR_PORT=$(free_port); GRPC_PORT=$(free_port); HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)

# The blob set: BLOBS files of 4 KiB of random bytes.
mkdir -p "$WORK/files"
python3 - "$WORK/files" "$BLOBS" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(root, f"{i:06d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
PY
head -c 4096 /dev/urandom > "$WORK/one.bin"

# nginx: files from disk (page cache), and one body from memory.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  open_file_cache max=20000 inactive=60s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/files;
    # One 4 KiB blob, always the same: its descriptor stays in the open-file
    # cache and its bytes in memory, so this measures nginx's HTTP path alone.
    location = /memory { default_type application/octet-stream; alias $WORK/one.bin; }
  }
}
CONF
chmod -R a+rX "$WORK"   # nginx workers run as an unprivileged user
nginx -c "$WORK/nginx.conf"

# hayloft: embedded server, blobs uploaded with `hayloft put`.
"$HAYLOFT" server --data-dir "$WORK/hayloft" --directory-listen 127.0.0.1:$DIR_PORT \
  --grpc-listen 127.0.0.1:$GRPC_PORT --http-listen 127.0.0.1:$HTTP_PORT \
  --metrics-listen 127.0.0.1:$METRICS_PORT > "$WORK/hayloft.log" 2>&1 &
HAYLOFT_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && break; sleep 0.1; done
sleep 1
( cd "$WORK/files" && HAYLOFT_DIRECTORY=127.0.0.1:$DIR_PORT "$HAYLOFT" put ./*.bin ) > "$WORK/ids.txt"

sed "s|^|/|" "$WORK/ids.txt" > "$WORK/hayloft-paths.txt"
(cd "$WORK/files" && ls) | sed "s|^|/|" > "$WORK/nginx-paths.txt"
cat > "$WORK/random.lua" <<'LUA'
local paths = {}
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(os.time())
end
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
LUA

run() { # name url [paths]
  local out
  if [ -n "${3:-}" ]; then
    out=$(wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s -s "$WORK/random.lua" "$2" -- "$3")
  else
    out=$(wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s "$2")
  fi
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local p99; p99=$(echo "$out" | awk '/Latency/ {print $2}')
  local errors; errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  if [ -n "$errors" ]; then echo "$1: errors: $errors" >&2; exit 1; fi
  printf "%-34s %12s req/s   mean latency %-9s %s\n" "$1" "$rps" "$p99" "$errors" >&2
  echo "$rps"
}

echo "4 KiB blobs: $BLOBS, wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s, $(nproc) cores" >&2
# Warm the page cache for both, so the run compares servers, not the disk.
cat "$WORK"/files/*.bin > /dev/null
NGINX_FILES=$(run "nginx, one file per blob" "http://127.0.0.1:$NGINX_PORT" "$WORK/nginx-paths.txt")
NGINX_MEMORY=$(run "nginx, one body from memory" "http://127.0.0.1:$NGINX_PORT/memory")
HAYLOFT_RPS=$(run "hayloft" "http://127.0.0.1:$HTTP_PORT" "$WORK/hayloft-paths.txt")

python3 - "$NGINX_FILES" "$NGINX_MEMORY" "$HAYLOFT_RPS" <<'PY'
import sys
files, memory, hayloft = (float(x) for x in sys.argv[1:])
print(f"hayloft / nginx-per-file: {hayloft / files:.2f}x   (target >= 1.2x)")
print(f"hayloft / nginx-memory (ceiling): {hayloft / memory:.2f}x   (target >= 0.85x)")
PY

# Uploads: 4 KiB writes vs a bare tonic server (the gRPC ceiling), 64 MiB
# uploads vs dd conv=fdatasync, on the disk hayloft's data is on.
echo >&2
"$UPLOAD_CEILING" --directory 127.0.0.1:$DIR_PORT --data-dir "$WORK/hayloft" --seconds "$SECONDS_PER_RUN"
