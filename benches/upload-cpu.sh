#!/usr/bin/env bash
# CPU per 4 KiB upload, by process: uploads/s of `hayloft bench
# --uploads-only --sizes 4KiB` (32 concurrent, client library) and the CPU
# time (utime + stime from /proc/<pid>/stat) each daemon and the bench client
# spent per upload, over the same run.
#
# Usage: benches/upload-cpu.sh [SERVERS] [REPLICATION] [SECONDS] [ROUNDS]
#   SERVERS 0 (default): one `hayloft server` (directory and volume server in
#   one process); SERVERS N: a directory and N volume servers on loopback
#   with REPLICATION copies (default 1). SECONDS a run (default 8), ROUNDS
#   runs on a fresh cluster each (default 3).
# VOLUME_TOML: extra volume settings, e.g. VOLUME_TOML='durability = "never"'.
# HAYLOFT: the binary to measure (default: a release build of this tree).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS=${1:-0}
REPLICATION=${2:-1}
SECONDS_PER_RUN=${3:-8}
ROUNDS=${4:-3}

if [ -z "${HAYLOFT:-}" ]; then
  cargo build --release -q -p hayloft --bin hayloft
  HAYLOFT=$PWD/target/release/hayloft
fi
WORK=$(mktemp -d)
source benches/lib.sh
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for round in $(seq "$ROUNDS"); do
  root=$WORK/r$round
  mkdir -p "$root"
  DIR_ADDR=127.0.0.1:$(free_port)
  NAMES=()
  if [ "$SERVERS" -eq 0 ]; then
    printf '[volume]\n%s\n' "${VOLUME_TOML:-}" > "$root/server.toml"
    "$HAYLOFT" server --config "$root/server.toml" --data-dir "$root/data" \
      --directory-listen "$DIR_ADDR" --grpc-listen 127.0.0.1:$(free_port) \
      --http-listen 127.0.0.1:$(free_port) --metrics-listen 127.0.0.1:$(free_port) \
      > "$root/server.log" 2>&1 &
    PIDS+=($!); NAMES+=(server)
  else
    "$HAYLOFT" directory --listen "$DIR_ADDR" --data-dir "$root/dir" --pulse 1s \
      --replication "$REPLICATION" --metrics-listen 127.0.0.1:$(free_port) \
      > "$root/directory.log" 2>&1 &
    PIDS+=($!); NAMES+=(directory)
    printf '%s\n' "${VOLUME_TOML:-}" > "$root/volume.toml"
    for i in $(seq 0 $((SERVERS - 1))); do
      "$HAYLOFT" volume --config "$root/volume.toml" --server-id "vs$i" --zone "z$((i % 2))" \
        --rack "r$i" --grpc-listen 127.0.0.1:$(free_port) --http-listen 127.0.0.1:$(free_port) \
        --metrics-listen 127.0.0.1:$(free_port) --directory "$DIR_ADDR" --data-dir "$root/vs$i" \
        --pulse 1s > "$root/vs$i.log" 2>&1 &
      PIDS+=($!); NAMES+=("vs$i")
    done
  fi
  sleep 3
  # A warm-up run (volumes created, connections open), then the measured one.
  HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" bench --uploads-only --sizes 4KiB --duration 2s > /dev/null
  BEFORE=()
  for pid in "${PIDS[@]}"; do BEFORE+=("$(cpu_ticks "$pid")"); done
  HAYLOFT_DIRECTORY=$DIR_ADDR /usr/bin/time -f "%U %S" -o "$root/client.time" \
    "$HAYLOFT" bench --uploads-only --sizes 4KiB --duration "${SECONDS_PER_RUN}s" --json \
    > "$root/bench.json"
  AFTER=()
  for pid in "${PIDS[@]}"; do AFTER+=("$(cpu_ticks "$pid")"); done
  python3 - "$round" "$(getconf CLK_TCK)" "$root" "${NAMES[*]}" "${BEFORE[*]}" "${AFTER[*]}" <<'PY'
import json, sys
round_, tck, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names, before, after = sys.argv[4].split(), sys.argv[5].split(), sys.argv[6].split()
run = json.load(open(f"{root}/bench.json"))[0]
n = run["requests"]
us = lambda ticks: ticks / tck * 1e6 / n
parts = [f"{name} {us(int(a) - int(b)):.1f}" for name, b, a in zip(names, before, after)]
client = sum(map(float, open(f"{root}/client.time").read().split()[-2:])) * 1e6 / n
print(f"round {round_}: {run['requests_per_sec']:.0f} uploads/s, p50 {run['p50_ms']} ms; "
      f"CPU us per upload: {', '.join(parts)}, bench client {client:.1f}")
PY
  stop_all
  rm -rf "$root"
done
