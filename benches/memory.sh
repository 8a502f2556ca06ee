#!/usr/bin/env bash
# Memory per needle of a running `hayloft server`, measured on the process
# itself (anonymous resident memory, RssAnon in /proc/PID/status):
#   1. a fresh server with no needle (the baseline, same run);
#   2. after NEEDLES/2 and after NEEDLES small blobs written through the real
#      upload path (`hayloft bench`: gRPC batched uploads, durability always);
#   3. after a restart (the index loaded from disk).
# Prints the figures and bytes per needle: while writing, the growth between
# the two points over the needles added (what each needle costs, apart from
# what the first writes set up once: memtables, connection buffers); over
# the baseline; and in all (the fixed part spread over the needles).
# Figures are taken 12 s after the load stops (the server hands its free
# heap back every 10 s).
#
# Usage: benches/memory.sh [NEEDLES] [BLOB_SIZE]   (defaults: 1200000, 64B)
set -euo pipefail
cd "$(dirname "$0")/.."

NEEDLES=${1:-1200000}
SIZE=${2:-64B}

bash scripts/setup.sh >/dev/null
cargo build --release -q -p hayloft --bin hayloft
HAYLOFT=$PWD/target/release/hayloft

WORK=$(mktemp -d)
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR_PORT=$(free_port); GRPC_PORT=$(free_port); HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)
export HAYLOFT_DIRECTORY=127.0.0.1:$DIR_PORT

start() {
  "$HAYLOFT" server --data-dir "$WORK/data" --directory-listen 127.0.0.1:$DIR_PORT \
    --grpc-listen 127.0.0.1:$GRPC_PORT --http-listen 127.0.0.1:$HTTP_PORT \
    --metrics-listen 127.0.0.1:$METRICS_PORT >> "$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do
    "$HAYLOFT" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server did not start:"; tail -20 "$WORK/server.log"; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
anon_kib() { awk '/^RssAnon:/ { print $2 }' "/proc/$PID/status"; }
needles() {
  "$HAYLOFT" status --json | python3 -c 'import json,sys; print(sum(v["needles"] for v in json.load(sys.stdin)["volumes"]))'
}
settle() { sleep 12; }
fill() {
  while [ "$(needles)" -lt "$1" ]; do
    "$HAYLOFT" bench --duration 10s --concurrency 64 --sizes "$SIZE" --batch 64 --uploads-only \
      >> "$WORK/bench.log" 2>&1
  done
}

start
settle
EMPTY=$(anon_kib)

fill $((NEEDLES / 2))
settle
HALF_COUNT=$(needles)
HALF=$(anon_kib)
fill "$NEEDLES"
settle
COUNT=$(needles)
WRITING=$(anon_kib)

stop
start
settle
RESTARTED=$(anon_kib)
stop

python3 - "$COUNT" "$EMPTY" "$WRITING" "$RESTARTED" "$HALF_COUNT" "$HALF" <<'PY'
import sys
n, empty, writing, restarted, half_n, half = (int(x) for x in sys.argv[1:])
print(f"needles                 {n} ({half_n} at the half-way point)")
print(f"RssAnon empty           {empty / 1024:8.1f} MiB")
print(f"RssAnon half-way        {half / 1024:8.1f} MiB")
print(f"RssAnon after writing   {writing / 1024:8.1f} MiB   "
      f"{(writing - half) * 1024 / (n - half_n):5.2f} B/needle added, "
      f"{(writing - empty) * 1024 / n:5.2f} B/needle over empty, {writing * 1024 / n:5.2f} B/needle in all")
print(f"RssAnon after restart   {restarted / 1024:8.1f} MiB   "
      f"{(restarted - empty) * 1024 / n:5.2f} B/needle over empty, {restarted * 1024 / n:5.2f} B/needle in all")
PY
