#!/usr/bin/env bash
# Reads from disk, side by side in one run: a blob set larger than the page
# cache, the page cache dropped before every reader, random GETs of the
# whole set while 4 more connections probe one hot blob.
#
#   1. fio randread of one file the size of the set, O_DIRECT (the device)
#      and buffered, same block size, io_uring at the same queue depth;
#   2. nginx serving one file per blob;
#   3. hayloft serving the same blobs from its volumes.
#
# How the page cache is kept smaller than the set: a ballast process holds
# all but CACHE_MIB of the memory available (anonymous memory, touched
# page by page; there is no swap here, so it stays), with oom_score_adj
# 1000 so that if anything on the machine needs memory the ballast is what
# the OOM killer takes (the script then says the run is void). The
# `Cached` line of /proc/meminfo is printed during each run to show it binds.
#
# Per reader: requests/s, p50/p99 (wrk), the hot blob's p99 idle and under
# the cold load, and from the device's own counters (/sys/block/DEV/stat)
# reads and KiB per GET. For hayloft also its counters: reads from memory vs
# disk and bytes read from disk (see README, Metrics).
#
# Usage: benches/disk-reads.sh [BLOB_KIB] [BLOBS] [CACHE_MIB] [SECONDS]
#   defaults: 64 KiB blobs, 100000 of them (6.1 GiB), 3072 MiB of page
#   cache, 15 s a run. 4 KiB: benches/disk-reads.sh 4 500000 1024
# Needs root (drop_caches). Installs fio, wrk and nginx-light if missing.
# HAYLOFT=path/to/hayloft to use a binary already built (else a release
# build). DEV=vda names the block device of the working directory. PERF=1
# records where hayloft's time goes during its cold run (perf, in
# $WORK/perf.txt; KEEP=1 keeps $WORK).
set -euo pipefail
cd "$(dirname "$0")/.."

BLOB_KIB=${1:-64}
BLOBS=${2:-100000}
CACHE_MIB=${3:-3072}
SECONDS_PER_RUN=${4:-15}
THREADS=2
CONNECTIONS=64
PROBE_CONNECTIONS=4
DEV=${DEV:-vda}

[ "$(id -u)" -eq 0 ] || { echo "needs root (drop_caches)" >&2; exit 1; }
need=()
command -v fio >/dev/null || need+=(fio)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ -z "${HAYLOFT:-}" ]; then
  cargo build --release -q -p hayloft --bin hayloft
  HAYLOFT=$PWD/target/release/hayloft
fi

# On the disk being measured (not a tmpfs).
WORK=$(mktemp -d -p "${WORK_PARENT:-/var/tmp}" hayloft-disk-reads.XXXXXX)
BALLAST_PID=""
cleanup() {
  [ -n "${BALLAST_PID}" ] && kill "$BALLAST_PID" 2>/dev/null || true
  [ -n "${HAYLOFT_PID:-}" ] && kill "$HAYLOFT_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

source benches/lib.sh
NGINX_PORT=$(free_port); DIR_PORT=$(free_port); GRPC_PORT=$(free_port); HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)
SET_BYTES=$(( BLOBS * BLOB_KIB * 1024 ))

echo "blobs: $BLOBS x $BLOB_KIB KiB ($(( SET_BYTES >> 20 )) MiB), page cache held to ~$CACHE_MIB MiB," \
  "wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s + hot probe -c$PROBE_CONNECTIONS, device $DEV, $(nproc) cores" >&2

# The blob set: one file per blob (nginx), the same bytes uploaded to hayloft.
mkdir -p "$WORK/files"
python3 - "$WORK/files" "$BLOBS" "$(( BLOB_KIB * 1024 ))" <<'PY'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(root, f"{i:07d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
serve_blobs
HOT_HAYLOFT=$(head -1 "$WORK/hayloft-paths.txt")
HOT_NGINX=$(head -1 "$WORK/nginx-paths.txt")
kill "$HAYLOFT_PID"; wait "$HAYLOFT_PID" 2>/dev/null || true; HAYLOFT_PID=""
# fio's file, the size of the set, laid out now.
fio --name=layout --filename="$WORK/fio.dat" --size="$SET_BYTES" --rw=write --bs=1M \
  --ioengine=psync --end_fsync=1 > /dev/null
chmod -R a+rX "$WORK"   # nginx workers run as an unprivileged user
sync

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
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/files;
  }
}
CONF

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cached_mib() { awk '/^Cached:/ {printf "%d", $2/1024}' /proc/meminfo; }
device() { awk '{print $1, $3}' "/sys/block/$DEV/stat"; }

# The ballast: all but CACHE_MIB of what is available now.
drop_caches
available_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
ballast_mib=$(( available_kib / 1024 - CACHE_MIB ))
python3 - "$ballast_mib" > "$WORK/ballast.out" <<'PY' &
import os, sys, time
with open(f"/proc/{os.getpid()}/oom_score_adj", "w") as f:
    f.write("1000")
n = int(sys.argv[1]) << 20
ballast = bytearray(n)
for i in range(0, n, 4096):
    ballast[i] = 1
print("ready", flush=True)
while True:
    time.sleep(3600)
PY
BALLAST_PID=$!
until grep -q ready "$WORK/ballast.out" 2>/dev/null; do
  kill -0 "$BALLAST_PID" || { echo "ballast died" >&2; exit 1; }
  sleep 1
done
echo "ballast: $ballast_mib MiB held; page cache now $(cached_mib) MiB" >&2
ballast_alive() { kill -0 "$BALLAST_PID" 2>/dev/null || { echo "the ballast was killed (OOM?): run void" >&2; exit 1; }; }

# "requests/s p50-ms p99-ms requests" of one wrk output.
parse_wrk() {
  local out=$1
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then
    echo "errors: $(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ')" >&2
  fi
  local ms='{v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1 == "50%" '"$ms")" \
    "$(echo "$out" | awk '$1 == "99%" '"$ms")" \
    "$(echo "$out" | awk '/requests in/ {print $1}')"
}

# run_http NAME BASE_URL PATHS HOT_PATH: idle probe, then the cold run with
# the probe beside it; prints one result line.
run_http() {
  local name=$1 base=$2 paths=$3 hot=$4
  curl -s -o /dev/null "$base$hot"
  local idle
  idle=$(parse_wrk "$(wrk -t1 -c$PROBE_CONNECTIONS -d5s --latency "$base$hot")")
  read -r r0 s0 < <(device)
  wrk -t1 -c$PROBE_CONNECTIONS -d${SECONDS_PER_RUN}s --latency "$base$hot" > "$WORK/$name-probe.txt" &
  local probe=$!
  ( sleep $(( SECONDS_PER_RUN / 2 )); echo "  $name: page cache mid-run $(cached_mib) MiB" >&2 ) &
  local cold
  cold=$(parse_wrk "$(wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency -s "$WORK/random.lua" "$base" -- "$paths")")
  wait "$probe"
  read -r r1 s1 < <(device)
  local loaded; loaded=$(parse_wrk "$(cat "$WORK/$name-probe.txt")")
  read -r rps p50 p99 n <<< "$cold"
  read -r _ _ idle99 _ <<< "$idle"
  read -r _ _ hot99 _ <<< "$loaded"
  python3 -c "
r, s, n = $r1 - $r0, ($s1 - $s0) * 512, $n
print(f'$name {float($rps):.0f} {$p50} {$p99} {$idle99} {$hot99} {r / n:.2f} {s / n / 1024:.1f}')"
}

# run_fio NAME DIRECT: prints "NAME iops p50 p99 - - reads/op KiB/op".
run_fio() {
  local name=$1 direct=$2
  read -r r0 s0 < <(device)
  fio --name="$name" --filename="$WORK/fio.dat" --size="$SET_BYTES" --rw=randread \
    --bs="${BLOB_KIB}k" --ioengine=io_uring --iodepth=$CONNECTIONS --direct="$direct" \
    --time_based --runtime="$SECONDS_PER_RUN" --output-format=json > "$WORK/$name.json"
  read -r r1 s1 < <(device)
  python3 - "$WORK/$name.json" "$name" "$(( r1 - r0 ))" "$(( (s1 - s0) * 512 ))" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]["read"]
pct = job["clat_ns"]["percentile"]
ops = job["total_ios"]
print(f'{sys.argv[2]} {job["iops"]:.0f} {pct["50.000000"] / 1e6:.2f} {pct["99.000000"] / 1e6:.2f} - - '
      f'{int(sys.argv[3]) / ops:.2f} {int(sys.argv[4]) / ops / 1024:.1f}')
PY
}

metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {printf "%.0f", s}'; }

# run_ceiling NAME URL: the same server, 64 connections on one blob that
# stays in memory: what serving HTTP alone costs at this blob size (the
# ceiling of a run from disk on this machine, where wrk shares the cores).
run_ceiling() {
  read -r rps p50 p99 _ <<< "$(parse_wrk "$(wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency "$2")")"
  echo "$1 $(printf '%.0f' "$rps") $p50 $p99 - - - -"
}

: > "$WORK/results.txt"
drop_caches; ballast_alive
run_fio fio-direct 1 >> "$WORK/results.txt"
drop_caches; ballast_alive
run_fio fio-buffered 0 >> "$WORK/results.txt"

drop_caches; ballast_alive
nginx -c "$WORK/nginx.conf"
sleep 0.5
run_http nginx "http://127.0.0.1:$NGINX_PORT" "$WORK/nginx-paths.txt" "$HOT_NGINX" >> "$WORK/results.txt"
run_ceiling nginx-one-blob "http://127.0.0.1:$NGINX_PORT$HOT_NGINX" >> "$WORK/results.txt"
kill "$(cat "$WORK/nginx.pid")"; sleep 1

drop_caches; ballast_alive
"$HAYLOFT" server --data-dir "$WORK/hayloft" --directory-listen 127.0.0.1:$DIR_PORT \
  --grpc-listen 127.0.0.1:$GRPC_PORT --http-listen 127.0.0.1:$HTTP_PORT \
  --metrics-listen 127.0.0.1:$METRICS_PORT > "$WORK/hayloft-2.log" 2>&1 &
HAYLOFT_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && break; sleep 0.1; done
sleep 1
faults0=$(awk '{print $12}' "/proc/$HAYLOFT_PID/stat")
if [ -n "${PERF:-}" ]; then
  # Where the server's time goes during the cold run (call graphs).
  ( sleep 3; perf record -F 499 -g -p "$HAYLOFT_PID" -o "$WORK/perf.data" -- sleep 8 > /dev/null 2>&1 ) &
fi
run_http hayloft "http://127.0.0.1:$HTTP_PORT" "$WORK/hayloft-paths.txt" "$HOT_HAYLOFT" >> "$WORK/results.txt"
faults1=$(awk '{print $12}' "/proc/$HAYLOFT_PID/stat")
sleep 0.3   # the HTTP threads publish their counts every 100 ms
memory=$(metric 'hayloft_volume_reads_total{source="memory"}')
disk=$(metric 'hayloft_volume_reads_total{source="disk"}')
disk_bytes=$(metric 'hayloft_volume_disk_read_bytes_total')
refused=$(metric 'hayloft_volume_disk_reads_refused_total')
ballast_alive
run_ceiling hayloft-one-blob "http://127.0.0.1:$HTTP_PORT$HOT_HAYLOFT" >> "$WORK/results.txt"
if [ -n "${PERF:-}" ]; then
  perf report -i "$WORK/perf.data" --no-children --sort dso,sym --percent-limit 1.5 --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40 > "$WORK/perf.txt" || true
fi

echo >&2
printf "%-13s %9s %8s %8s %11s %11s %10s %10s\n" reader "GETs/s" "p50 ms" "p99 ms" "hot idle p99" "hot p99" "dev reads" "dev KiB" >&2
printf "%-13s %9s %8s %8s %11s %11s %10s %10s\n" "" "(ops/s)" "" "" "" "(under load)" "per GET" "per GET" >&2
while read -r name rps p50 p99 idle hot reads kib; do
  printf "%-13s %9s %8s %8s %11s %11s %10s %10s\n" "$name" "$rps" "$p50" "$p99" "$idle" "$hot" "$reads" "$kib" >&2
done < "$WORK/results.txt"
python3 - "$WORK/results.txt" <<'PY' >&2
import sys
rows = {l.split()[0]: l.split() for l in open(sys.argv[1])}
h = float(rows["hayloft"][1])
print(f"hayloft cold / hayloft one blob in memory: {h / float(rows['hayloft-one-blob'][1]):.2f}x")
for base in ("fio-direct", "fio-buffered", "nginx"):
    print(f"hayloft / {base}: {h / float(rows[base][1]):.2f}x reads/s, p99 {float(rows['hayloft'][3]) / float(rows[base][3]):.2f}x")
print(f"hayloft hot p99 under load / idle: {float(rows['hayloft'][5]) / float(rows['hayloft'][4]):.2f}x")
PY
echo "hayloft counters: $memory reads from memory, $disk from disk, $(( disk_bytes / (disk > 0 ? disk : 1) )) bytes read per read from disk," \
  "$refused refused; $(( faults1 - faults0 )) major faults in the server during the run" >&2
echo "raw results in $WORK (kept with KEEP=1)" >&2
