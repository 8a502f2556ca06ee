#!/usr/bin/env bash
# Replication between regions at a real distance, on one machine, in one run.
#
# Two regions, each a `hayloft server` (directory + volume server): a in this
# network namespace, b in its own (`hayloft-b`), joined by a veth pair.
# Every byte between them goes through `delay-proxy`, which holds it
# DELAY_MS each way (a round trip of 2 x DELAY_MS; default 50, so 100 ms) and
# carries at most RATE_MBIT megabits a second each way (default 1000): a link
# between two data centres. `tc netem` is not in this kernel, so the delay
# is the proxy's: b's view of a's addresses is a proxy in b's namespace,
# a's view of b's one in this one (each server binds 0.0.0.0 and advertises
# an address that is its own in its namespace and the proxy's in the other).
#
# In one run:
#   1. the link: one HTTP GET of a 64 MiB blob from a, made in b's namespace
#      through the proxy (what one connection of the link carries);
#   2. uploads into a alone (no --replicate-to), CONCURRENCY uploaders of
#      SIZE bytes for SECONDS (`region-lag`): the baseline;
#   3. the same into a replicating to b, while `region-lag` polls b's copy's
#      log every 20 ms: a's upload rate against (2), and per blob the time
#      from its acknowledgement in a to its being durable in b (p50, p99,
#      p99.99, max); then (3c) the same lag under a steady RATE uploads a
#      second, and (3b) 20 reads in b of blobs just uploaded in a (not
#      shipped yet: read from a, one round trip more);
#   4. b killed for OUTAGE seconds while a takes uploads of 64 KiB blobs at
#      full speed, then restarted: how long b takes to catch up from its
#      position (b's hayloft_region_lag_entries{from="a"} back to 0) and at
#      what rate (b's hayloft_region_shipped_bytes_total over that time),
#      against (1).
#
# Targets (issue 34): (3) p99 lag <= 2 s, p99.99 <= 60 s, a's upload rate >=
# 0.9x of (2); (4) catch-up >= 0.8x of what the link carries.
#
# Needs root (network namespaces). Data under $TMPDIR (mktemp).
#
# Usage: benches/regions.sh [SECONDS] [CONCURRENCY] [SIZE] [OUTAGE]
#   (defaults: 30 s, 16 uploaders, 4096 bytes, 120 s of outage; the issue's
#   10-minute outage is OUTAGE=600; 0 skips step 4). DELAY_MS, RATE_MBIT,
#   RATE (steady uploads a second, default 2000) and B_DATA (where b keeps
#   its data, default with a's: B_DATA=/dev/shm keeps b's writes off a's
#   disk) and PIN (1: each region on a core of its own, see below) from the
#   environment.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_PHASE=${1:-30}
CONCURRENCY=${2:-16}
SIZE=${3:-4096}
OUTAGE=${4:-120}
DELAY_MS=${DELAY_MS:-50}
RATE_MBIT=${RATE_MBIT:-1000}
RATE=${RATE:-2000}
# PIN=1: a (and the uploaders) on CPU 0, b and the link's proxies on CPU 1,
# as if each region had its own machine: a's upload rate is then what
# shipping costs a, not what b's work takes from the shared cores.
if [[ "${PIN:-0}" == 1 ]]; then ON_A="taskset -c 0"; ON_B="taskset -c 1"; else ON_A=""; ON_B=""; fi

bash scripts/setup.sh
cargo build --release -q -p hayloft --bin hayloft
cargo build --release -q -p hayloft-benches --bin delay-proxy --bin region-lag
HAYLOFT=$PWD/target/release/hayloft
PROXY=$PWD/target/release/delay-proxy
LAG=$PWD/target/release/region-lag
WORK=$(mktemp -d)
B_DATA=${B_DATA:-$WORK}
if [[ "$B_DATA" != "$WORK" ]]; then B_DATA=$(mktemp -d -p "$B_DATA"); fi
source benches/lib.sh

NS=hayloft-b
A_IP=10.77.0.1     # a's advertised address (b's proxy in b's namespace)
B_IP=10.77.0.2     # b's advertised address (a's proxy in this namespace)
A_LINK=10.77.0.5   # this namespace's end of the veth pair
B_LINK=10.77.0.6   # b's end
in_b() { ip netns exec "$NS" "$@"; }

cleanup() {
  stop_all
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip link del hayloft-va 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip addr del "$A_IP/32" dev lo 2>/dev/null || true
  ip addr del "$B_IP/32" dev lo 2>/dev/null || true
  rm -rf "$WORK" "$B_DATA"
}
trap cleanup EXIT

ip netns add "$NS"
ip link add hayloft-va type veth peer name hayloft-vb
ip link set hayloft-vb netns "$NS"
ip addr add "$A_LINK/24" dev hayloft-va && ip link set hayloft-va up
in_b ip addr add "$B_LINK/24" dev hayloft-vb
in_b ip link set hayloft-vb up
in_b ip link set lo up
ip addr add "$A_IP/32" dev lo
in_b ip addr add "$A_IP/32" dev lo
in_b ip addr add "$B_IP/32" dev lo
ip addr add "$B_IP/32" dev lo

# Ports: directory, gRPC, HTTP, metrics of each region (distinct overall).
read -r DA GA HA MA DB GB HB MB < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)

# The proxies: in b's namespace, a's address leads to a; here, b's to b.
in_b $ON_B "$PROXY" --delay-ms "$DELAY_MS" --rate-mbit "$RATE_MBIT" \
  "$A_IP:$DA=$A_LINK:$DA" "$A_IP:$GA=$A_LINK:$GA" "$A_IP:$HA=$A_LINK:$HA" \
  > "$WORK/proxy-b.log" 2>&1 &
PIDS+=($!)
$ON_B "$PROXY" --delay-ms "$DELAY_MS" --rate-mbit "$RATE_MBIT" \
  "$B_IP:$DB=$B_LINK:$DB" "$B_IP:$GB=$B_LINK:$GB" "$B_IP:$HB=$B_LINK:$HB" \
  > "$WORK/proxy-a.log" 2>&1 &
PIDS+=($!)

# start_a NAME [--replicate-to b]: region a's server, data in $WORK/NAME.
start_a() {
  local name=$1; shift
  cat > "$WORK/$name.toml" <<TOML
[volume]
public_grpc_addr = "$A_IP:$GA"
public_http_addr = "$A_IP:$HA"
TOML
  $ON_A "$HAYLOFT" server --config "$WORK/$name.toml" --data-dir "$WORK/$name" \
    --directory-listen 0.0.0.0:$DA --grpc-listen 0.0.0.0:$GA --http-listen 0.0.0.0:$HA \
    --insecure --metrics-listen 127.0.0.1:$MA --region a:0 --regions "b:1=$B_IP:$DB" "$@" \
    > "$WORK/$name.log" 2>&1 &
  A_PID=$!
  PIDS+=($A_PID)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$HA/" && break; sleep 0.1; done
}

# start_b NAME: region b's server in its namespace, data in
# $B_DATA/NAME ($B_DATA: $WORK unless B_DATA is set, e.g. to a tmpfs to keep
# b's writes off a's disk).
start_b() {
  local name=$1
  cat > "$WORK/$name.toml" <<TOML
[volume]
public_grpc_addr = "$B_IP:$GB"
public_http_addr = "$B_IP:$HB"
TOML
  in_b $ON_B "$HAYLOFT" server --config "$WORK/$name.toml" --data-dir "$B_DATA/$name" \
    --directory-listen 0.0.0.0:$DB --grpc-listen 0.0.0.0:$GB --http-listen 0.0.0.0:$HB \
    --insecure --metrics-listen 0.0.0.0:$MB --region b:1 --regions "a:0=$A_IP:$DA" \
    > "$WORK/$name.log" 2>&1 &
  B_PID=$!
  PIDS+=($B_PID)
  for _ in $(seq 100); do curl -s -o /dev/null "http://$B_LINK:$HB/" && break; sleep 0.1; done
}

# CPU seconds (user + system) the process PID has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# CPU microseconds per upload between two cpu_of readings.
per_upload() { python3 -c "print(f'{($2 - $1) * 1e6 / max($3, 1):.0f}')"; }

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
kill_b() { in_b pkill -9 -f "data-dir $B_DATA/$1" || true; wait "$B_PID" 2>/dev/null || true; }
value() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
metric() { curl -s "http://$B_LINK:$MB/metrics" | sed -n "s/^$1 //p"; }

echo "== regions a and b, ${DELAY_MS} ms each way (RTT $((2 * DELAY_MS)) ms), ${RATE_MBIT} Mbit/s each way"

# 1. The link: a request's round trip, and one connection's bulk rate
#    (b reading a 64 MiB blob from a).
start_a link
rtt=$(in_b curl -s -o /dev/null -w '%{time_total}' "http://$A_IP:$HA/" || true)
echo "one HTTP request from b to a's origin through the link: ${rtt}s"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$WORK/big.bin"
big=$(HAYLOFT_DIRECTORY=127.0.0.1:$DA "$HAYLOFT" put "$WORK/big.bin")
link=$(in_b curl -s -o /dev/null -w '%{speed_download}' "http://$A_IP:$HA/$big")
link_mib=$(python3 -c "print(f'{$link / 1048576:.1f}')")
echo "the link carries ${link_mib} MiB/s (one HTTP GET of 64 MiB through it)"
stop_pid "$A_PID"

# 2. a alone.
start_a alone
sleep 2
cpu0=$(cpu_of "$A_PID")
alone=$($ON_A "$LAG" --directory 127.0.0.1:$DA --seconds "$SECONDS_PER_PHASE" \
  --concurrency "$CONCURRENCY" --size "$SIZE" | tee -a "$WORK/lag.txt" | tail -1)
echo "a alone: $alone"
cpu_alone=$(per_upload "$cpu0" "$(cpu_of "$A_PID")" "$(value uploads "$alone")")
# 2c. a alone at the steady RATE: its CPU per upload at the same rate as (3c).
cpu0=$(cpu_of "$A_PID")
steady_alone=$($ON_A "$LAG" --directory 127.0.0.1:$DA --seconds "$SECONDS_PER_PHASE" --rate "$RATE" \
  --concurrency "$CONCURRENCY" --size "$SIZE" | tail -1)
cpu_steady_alone=$(per_upload "$cpu0" "$(cpu_of "$A_PID")" "$(value uploads "$steady_alone")")
stop_pid "$A_PID"

# 3. a replicating to b, b's copy watched.
start_b b
start_a replicating --replicate-to b
sleep 2
cpu0=$(cpu_of "$A_PID")
shipping=$($ON_A "$LAG" --directory 127.0.0.1:$DA --seconds "$SECONDS_PER_PHASE" \
  --concurrency "$CONCURRENCY" --size "$SIZE" --watch "$B_LINK:$GB" | tee -a "$WORK/lag.txt" | tail -1)
echo "a replicating to b: $shipping"
cpu_shipping=$(per_upload "$cpu0" "$(cpu_of "$A_PID")" "$(value uploads "$shipping")")
echo "a's own CPU per upload: ${cpu_alone} us alone, ${cpu_shipping} us replicating to b (its share of shipping: ReadLog, FetchNeedles)"
ratio=$(python3 -c "print(f'{$(value uploads_per_s "$shipping") / $(value uploads_per_s "$alone"):.2f}')")
echo "upload rate with replication / without: ${ratio}x (target >= 0.9x)"
echo "lag p99 $(value lag_p99_ms "$shipping") ms (target <= 2000), p99.99 $(value lag_p9999_ms "$shipping") ms (target <= 60000), max $(value lag_max_ms "$shipping") ms"

# 3c. Steady uploads at RATE a second (what the region takes day to day),
#     b's copy watched: the lag a steady load sees.
cpu0=$(cpu_of "$A_PID")
steady=$($ON_A "$LAG" --directory 127.0.0.1:$DA --seconds "$SECONDS_PER_PHASE" --rate "$RATE" \
  --concurrency "$CONCURRENCY" --size "$SIZE" --watch "$B_LINK:$GB" | tee -a "$WORK/lag.txt" | tail -1)
echo "steady ${RATE}/s into a replicating to b: $steady"
cpu_steady=$(per_upload "$cpu0" "$(cpu_of "$A_PID")" "$(value uploads "$steady")")
echo "a's own CPU per upload at ${RATE}/s: ${cpu_steady_alone} us alone, ${cpu_steady} us replicating to b"
echo "steady lag p50 $(value lag_p50_ms "$steady") ms, p99 $(value lag_p99_ms "$steady") ms (target <= 2000), p99.99 $(value lag_p9999_ms "$steady") ms (target <= 60000), max $(value lag_max_ms "$steady") ms"

# 3b. Reads in b of blobs just uploaded in a (not shipped yet: b's copy
#     reads them from a, one round trip more): status and time of each.
head -c 16384 /dev/urandom > "$WORK/fresh.bin"
for _ in $(seq 20); do
  id=$(HAYLOFT_DIRECTORY=127.0.0.1:$DA "$HAYLOFT" put "$WORK/fresh.bin")
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://$B_LINK:$HB/$id"
done > "$WORK/fresh.txt"
python3 - "$WORK/fresh.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ok = sum(1 for c, _ in rows if c == "200")
times = sorted(float(t) * 1000 for _, t in rows)
print(f"reads in b right after the upload in a: {ok}/{len(rows)} answered 200, "
      f"median {times[len(times) // 2]:.0f} ms, max {times[-1]:.0f} ms")
PY

# 4. b down for OUTAGE seconds under 64 KiB uploads, then back (OUTAGE=0:
#    not run).
if [[ "$OUTAGE" == 0 ]]; then echo "no outage asked for"; exit 0; fi
kill_b b
echo "b killed; a takes 64 KiB uploads for ${OUTAGE}s"
outage=$($ON_A "$LAG" --directory 127.0.0.1:$DA --seconds "$OUTAGE" --concurrency "$CONCURRENCY" \
  --size 65536 | tail -1)
echo "during the outage: $outage"
start_b b
back=$(date +%s.%N)
first=""
while true; do
  entries=$(metric 'hayloft_region_lag_entries{from="a"}')
  bytes=$(metric 'hayloft_region_shipped_bytes_total{from="a"}')
  now=$(date +%s.%N)
  if [[ -z "$first" && -n "$bytes" && "${bytes%.*}" -gt 0 ]]; then first=$now; first_bytes=$bytes; fi
  if [[ -n "$first" && "$entries" == "0" ]]; then break; fi
  if python3 -c "import sys; sys.exit(0 if $now - $back > 3600 else 1)"; then
    echo "b did not catch up within an hour"; break
  fi
  sleep 0.5
done
python3 - "$back" "$first" "$now" "${bytes:-0}" "$link" <<'PY'
import sys
back, first, done, shipped, link = map(float, sys.argv[1:])
# From b's start (its own start-up included): a lower bound. The counter
# moves a batch at a time, so timing from the first bytes would flatter.
rate = shipped / max(done - back, 1e-9)
print(f"b back: first bytes after {first - back:.1f}s, caught up after {done - back:.1f}s; "
      f"{shipped / 1048576:.0f} MiB shipped at {rate / 1048576:.1f} MiB/s "
      f"= {rate / link:.2f}x the link (target >= 0.8x)")
PY
echo "logs and lag output: $WORK (removed at exit)"
