#!/usr/bin/env bash
# Replication benchmarks on this machine, in one run:
#   1. uploads/s of 4 KiB and 1 MiB blobs (durability always) through the
#      client library (`hayloft bench --uploads-only`) into a cluster of a
#      directory and 3 volume servers on loopback, with replication 3 and with
#      replication 1, in interleaved rounds, each after a 2 s warm-up (volumes
#      created, connections open); prints the medians and the ratio
#      (target: replicated >= 0.5x unreplicated for 4 KiB);
#   2. repair: 4 volume servers, replication 3, REPAIR_MIB MiB of 1 MiB blobs;
#      one server is killed and its copies re-created on the fourth at the
#      configured repair_rate: prints the measured repair throughput against
#      the rate, and the read p50/p99 of `hayloft bench` during the repair
#      against the same bench idle.
#
# Every server's data lives under $TMPDIR (mktemp): on one disk, replication 3
# makes three times the fsyncs of replication 1 on that one disk; with
# TMPDIR=/dev/shm (no fsync cost) the comparison measures the CPU cost of
# replicating instead.
#
# Usage: benches/replication.sh [SECONDS] [ROUNDS] [REPAIR_MIB] [REPAIR_RATE_MIB]
#   (defaults: 10 s a phase, 3 rounds, 512 MiB to repair at 8 MiB/s per
#   repair, slow enough that the repair spans the read bench; ROUNDS 0 skips
#   the upload comparison, REPAIR_MIB 0 the repair)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_PHASE=${1:-10}
ROUNDS=${2:-3}
REPAIR_MIB=${3:-512}
REPAIR_RATE_MIB=${4:-8}

bash scripts/setup.sh
cargo build --release -q -p hayloft --bin hayloft
HAYLOFT=$PWD/target/release/hayloft
WORK=$(mktemp -d)
source benches/lib.sh
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

# start_cluster NAME REPLICATION SERVERS [extra volume flags...]
start_cluster() {
  local name=$1 replication=$2 servers=$3; shift 3
  local root=$WORK/$name
  mkdir -p "$root"
  DIR_ADDR=127.0.0.1:$(free_port)
  "$HAYLOFT" directory --listen "$DIR_ADDR" --data-dir "$root/dir" --pulse 1s --dead-after 3s \
    --repair-after 1s --replication "$replication" --metrics-listen 127.0.0.1:$(free_port) \
    > "$root/directory.log" 2>&1 &
  PIDS+=($!)
  VOLUME_PIDS=()
  for i in $(seq 0 $((servers - 1))); do
    cat > "$root/vs$i.toml" <<TOML
repair_rate = "${REPAIR_RATE_MIB}MiB"
TOML
    "$HAYLOFT" volume --config "$root/vs$i.toml" --server-id "vs$i" --zone "z$((i % 2))" --rack "r$i" \
      --grpc-listen 127.0.0.1:$(free_port) --http-listen 127.0.0.1:$(free_port) \
      --metrics-listen 127.0.0.1:$(free_port) --directory "$DIR_ADDR" --data-dir "$root/vs$i" \
      --pulse 1s "$@" > "$root/vs$i.log" 2>&1 &
    PIDS+=($!); VOLUME_PIDS+=($!)
  done
  for _ in $(seq 100); do
    alive=$(HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" status --json 2>/dev/null \
      | python3 -c 'import json,sys; print(sum(s["alive"] for s in json.load(sys.stdin)["servers"]))' 2>/dev/null || echo 0)
    [ "$alive" = "$servers" ] && return 0
    sleep 0.2
  done
  echo "cluster $name did not come up"; tail "$root"/*.log; exit 1
}

# upload_rate SIZE: uploads/s of SIZE blobs into the running cluster.
upload_rate() {
  HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" bench --uploads-only --sizes "$1" \
    --duration "${SECONDS_PER_PHASE}s" --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f" % r[0]["requests_per_sec"])'
}

# Prints the first warnings and errors a cluster's daemons logged (a copy
# reported stale, a heartbeat lost...): a run that degraded says why.
report_warnings() {
  local lines
  lines=$(grep -h -E ' (WARN|ERROR) ' "$1"/*.log 2>/dev/null | head -5 || true)
  if [ -n "$lines" ]; then
    echo "  the daemons logged warnings (first 5):"
    echo "$lines" | cut -c1-300 | sed 's/^/    /'
  fi
}

median() { python3 -c 'import statistics,sys; print("%.0f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }

echo "== uploads: replication 3 vs 1 (3 volume servers on loopback, durability always)"
declare -A RATES
for round in $(seq "$ROUNDS"); do
  order="1 3"; [ $((round % 2)) -eq 0 ] && order="3 1"
  for replication in $order; do
    start_cluster "r$replication-$round" "$replication" 3
    # Warm-up (volumes created, connections open): steady state is measured.
    HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" bench --uploads-only --sizes 4KiB --duration 2s > /dev/null
    for size in 4KiB 1MiB; do
      rate=$(upload_rate "$size")
      RATES[$replication-$size]="${RATES[$replication-$size]:-} $rate"
      echo "round $round  replication $replication  $size: $rate uploads/s"
    done
    stop_all
    report_warnings "$WORK/r$replication-$round"
    rm -rf "$WORK/r$replication-$round"
  done
done
[ "$ROUNDS" -gt 0 ] && for size in 4KiB 1MiB; do
  one=$(median ${RATES[1-$size]}); three=$(median ${RATES[3-$size]})
  python3 -c "print('$size: replication 1 %s/s, replication 3 %s/s: %.2fx' % ($one, $three, $three / $one))"
done

[ "$REPAIR_MIB" -gt 0 ] || exit 0
echo "== repair: ${REPAIR_MIB} MiB, one of 4 servers killed, repair_rate ${REPAIR_RATE_MIB} MiB/s"
start_cluster repair 3 4
python3 - "$WORK/blob" <<'PY'
import os, sys
open(sys.argv[1], "wb").write(os.urandom(1 << 20))
PY
for i in $(seq "$REPAIR_MIB"); do echo "$WORK/blob"; done \
  | HAYLOFT_DIRECTORY=$DIR_ADDR xargs -P 8 -n 16 "$HAYLOFT" put > /dev/null
bench_reads() {
  HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" bench --sizes 4KiB --duration "${SECONDS_PER_PHASE}s" --json 2>>"$WORK/bench.log" \
    | python3 -c 'import json,sys; r=[p for p in json.load(sys.stdin) if p["phase"].startswith("http read")][0]; print("%.2f %.2f %.0f" % (r["p50_ms"], r["p99_ms"], r["requests_per_sec"]))'
}
IDLE=$(bench_reads)
# Bytes of the copies vs0 holds: what the repair re-creates.
LOST_BYTES=$(HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" status --json \
  | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(v["file_bytes"] for v in s["volumes"] if any(r["server"]=="vs0" for r in v["replicas"])))')
# Kill vs0; time until every volume is whole without it.
VICTIM=${VOLUME_PIDS[0]}
kill -9 "$VICTIM"
STARTED=$(date +%s.%N)
DURING=$(bench_reads)
for _ in $(seq 3000); do
  healthy=$(HAYLOFT_DIRECTORY=$DIR_ADDR "$HAYLOFT" status --json 2>/dev/null \
    | python3 -c 'import json,sys; s=json.load(sys.stdin); print(all(v["health"]=="ok" and all(r["server"]!="vs0" for r in v["replicas"]) for v in s["volumes"]))' 2>/dev/null || echo False)
  [ "$healthy" = "True" ] && break
  sleep 0.2
done
ENDED=$(date +%s.%N)
python3 - "$STARTED" "$ENDED" "$LOST_BYTES" "$REPAIR_RATE_MIB" "$IDLE" "$DURING" <<'PY'
import sys
started, ended, lost, rate = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
idle, during = sys.argv[5].split(), sys.argv[6].split()
seconds = ended - started
lost /= 1 << 20
print("repair: %.0f MiB re-created in %.1f s from the kill (3 s dead_after + 1 s repair_after included): %.1f MiB/s in all; repair_rate %.0f MiB/s per repair"
      % (lost, seconds, lost / seconds, rate))
print("reads (4 KiB, HTTP): idle p50 %s ms p99 %s ms (%s/s); during the repair p50 %s ms p99 %s ms (%s/s)"
      % (idle[0], idle[1], idle[2], during[0], during[1], during[2]))
PY
