#!/usr/bin/env bash
# The erasure-coded warm tier against the same blobs replicated, in one run.
#
# A directory and SERVERS volume servers (`hayloft directory`, `hayloft
# volume`) on loopback, in 3 zones, replication 3, volumes of 128 MiB (they
# seal as they fill). BLOBS blobs of SIZE bytes are uploaded, then:
#   1. reads of random blobs, replicated: `wrk` on every server's origin at
#      once (CONNECTIONS spread over them: a CDN's misses spread over the
#      origin hosts); reads/s and the worst server's p50/p99;
#   2. every volume erasure-coded with `hayloft tier ec` (CODE, default
#      4+2 over SERVERS=7: six holders and a spare for the rebuild;
#      CODE=10+4 SERVERS=15 is f4's code): its time and MiB/s of data; the effective replication factor before and after
#      (`hayloft status --json`: bytes stored / bytes of data);
#   3. the same reads, erasure-coded and healthy: a needle's holder reads
#      it with one read, any other server proxies it (one hop, as for a
#      replicated blob the server has no copy of);
#   4. one holder SIGKILLed: the same reads from the servers left; a needle
#      whose shard was on it is rebuilt from k other shards' ranges;
#   5. the directory restarted with `--repair-after 2s`: the lost shards are
#      rebuilt on the spare servers while the reads go on: the rebuild's
#      MiB/s of shard bytes and the reads' p99 meanwhile.
# Every read is checked: wrk counts answers other than 200 (there must be
# none) and a sample of blobs is compared byte for byte after each phase.
#
# The blobs stay in the page cache (a few hundred MiB): these are figures of
# the servers' work and the extra hops, not of the disk (see
# benches/disk-reads.sh for reads from disk).
#
# Usage: benches/erasure.sh [BLOBS] [SIZE] [SECONDS]
#   (defaults: 6000 blobs, 65536 bytes, 15 s a read phase; CODE, SERVERS
#   and CONNECTIONS (default 32) from the environment).
set -euo pipefail
cd "$(dirname "$0")/.."

BLOBS=${1:-6000}
SIZE=${2:-65536}
SECONDS_PER_RUN=${3:-15}
CODE=${CODE:-4+2}
SERVERS=${SERVERS:-7}
CONNECTIONS=${CONNECTIONS:-32}

bash scripts/setup.sh
command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
cargo build --release -q -p hayloft --bin hayloft
export HAYLOFT=$PWD/target/release/hayloft
WORK=$(mktemp -d)
source benches/lib.sh
trap 'stop_all; [[ -n "${KEEP:-}" ]] || rm -rf "$WORK"' EXIT

DIR_PORT=$(free_port)
export HAYLOFT_DIRECTORY=127.0.0.1:$DIR_PORT
start_directory() {
  "$HAYLOFT" directory --listen 127.0.0.1:$DIR_PORT --data-dir "$WORK/directory" \
    --replication 3 --ec-code "$CODE" --pulse 1s "$@" >> "$WORK/directory.log" 2>&1 &
  DIR_PID=$!
  PIDS+=($DIR_PID)
  for _ in $(seq 100); do "$HAYLOFT" status > /dev/null 2>&1 && break; sleep 0.2; done
}
start_directory --repair-after 1h
HTTP=()
VOL_PIDS=()
for i in $(seq 0 $((SERVERS - 1))); do
  http=$(free_port)
  HTTP+=("$http")
  "$HAYLOFT" volume --server-id "vs$i" --data-dir "$WORK/vs$i" --directory "$HAYLOFT_DIRECTORY" \
    --grpc-listen 127.0.0.1:$(free_port) --http-listen 127.0.0.1:$http \
    --metrics-listen 127.0.0.1:$(free_port) --zone "z$((i % 3))" --rack "r$i" \
    --max-volume-size 128MiB --pulse 1s > "$WORK/vs$i.log" 2>&1 &
  VOL_PIDS+=($!)
  PIDS+=($!)
done
for _ in $(seq 100); do
  alive=$("$HAYLOFT" status --json 2>/dev/null | python3 -c 'import json,sys; print(sum(s["alive"] for s in json.load(sys.stdin)["servers"]))' 2>/dev/null || echo 0)
  [[ "$alive" == "$SERVERS" ]] && break
  sleep 0.3
done
echo "== $SERVERS volume servers in 3 zones, replication 3, then RS($CODE); $BLOBS blobs of $SIZE bytes; wrk -c$CONNECTIONS for ${SECONDS_PER_RUN}s a phase, $(nproc) cores"

# The blobs: random files, uploaded 8 at a time.
write_blobs "$WORK/files" "$BLOBS" "$SIZE"
started=$(date +%s.%N)
# "name id" per blob, 8 uploads at once (one `hayloft put` a file: a
# failed upload, e.g. refused by a volume sealing as it fills, is retried
# once more and otherwise left out, not paired with another file's id).
(cd "$WORK/files" && ls | xargs -P 8 -n 1 bash -c \
  'id=$("$HAYLOFT" put "$1" 2>/dev/null || "$HAYLOFT" put "$1") && echo "$1 $id"' _) > "$WORK/pairs.txt"
cut -d' ' -f2 "$WORK/pairs.txt" > "$WORK/ids.txt"
echo "uploaded $(wc -l < "$WORK/ids.txt") blobs in $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s"
sed "s|^|/|" "$WORK/ids.txt" > "$WORK/paths.txt"
cat > "$WORK/random.lua" <<'LUA'
local requests = {}
init = function(args)
  for line in io.lines(args[1]) do requests[#requests + 1] = wrk.format("GET", line) end
  math.randomseed(os.time() + tonumber(args[2]))
end
request = function()
  return requests[math.random(#requests)]
end
LUA

# reads NAME [SERVER...]: wrk on each given server's origin (default all)
# at once, CONNECTIONS over them; prints one summary line.
reads() {
  local name=$1; shift
  local servers=("$@")
  [[ ${#servers[@]} -gt 0 ]] || servers=($(seq 0 $((SERVERS - 1))))
  local each=$(( (CONNECTIONS + ${#servers[@]} - 1) / ${#servers[@]} ))
  local loads=()
  for i in "${servers[@]}"; do
    wrk -t1 -c"$each" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/random.lua" \
      "http://127.0.0.1:${HTTP[$i]}" -- "$WORK/paths.txt" "$i" > "$WORK/$name-$i.txt" &
    loads+=($!)
  done
  if [[ "${PERF:-}" == "$name" ]]; then
    # Where vs0's time goes in this phase (perf report -i $WORK/perf.data).
    perf record -F 499 ${PERF_ARGS:--g} -p "${VOL_PIDS[0]}" -o "$WORK/perf.data" -- sleep $((SECONDS_PER_RUN - 3)) \
      > /dev/null 2>&1
    echo "perf of vs0 during $name: $WORK/perf.data" >&2
  fi
  wait "${loads[@]}"
  python3 - "$name" "$WORK"/"$name"-*.txt <<'PY'
import re, sys
name, files = sys.argv[1], sys.argv[2:]
def ms(v):
    n, unit = float(re.match(r"[\d.]+", v).group()), re.sub(r"[\d.]+", "", v)
    return n * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rate = bad = 0.0
p50 = p99 = 0.0
for f in files:
    text = open(f).read()
    rate += float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = max(p50, ms(re.search(r"\s50%\s+(\S+)", text).group(1)))
    p99 = max(p99, ms(re.search(r"\s99%\s+(\S+)", text).group(1)))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    bad += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    if m:
        bad += sum(int(x) for x in re.findall(r"\d+", m.group(1)))
print(f"{name}: reads_per_s={rate:.0f} p50_ms={p50:.2f} p99_ms={p99:.2f} failed={bad:.0f}")
PY
}

# check NAME SERVER: 50 random blobs read from SERVER's origin, byte for byte.
check() {
  local bad=0
  while read -r file id; do
    if ! curl -s "http://127.0.0.1:${HTTP[$2]}/$id" | cmp -s - "$WORK/files/$file"; then
      bad=$((bad + 1))
      echo "  $id ($file) differs: $(curl -s -o /dev/null -w '%{http_code} %{size_download} bytes' "http://127.0.0.1:${HTTP[$2]}/$id")"
    fi
  done < <(shuf -n 50 "$WORK/pairs.txt")
  echo "$1: 50 random blobs read back from vs$2, $bad differ"
  [[ $bad == 0 ]]
}

factor() {
  "$HAYLOFT" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["replication_factor"]
factor, stored, logical = s["factor"], s["stored_bytes"] / 1048576, s["logical_bytes"] / 1048576
print(f"{factor:.2f} ({stored:.0f} MiB stored / {logical:.0f} MiB of data)")'
}
volumes() {
  "$HAYLOFT" status --json | python3 -c '
import json, sys
print(" ".join(str(v["id"]) for v in json.load(sys.stdin)["volumes"] if v["needles"] > 0))'
}

# 1. Replicated.
replicated=$(reads replicated)
echo "$replicated"
check replicated 0
echo "effective replication factor, replicated: $(factor)"

# 2. Encode every volume with blobs.
vols=$(volumes)
started=$(date +%s.%N)
# shellcheck disable=SC2086
"$HAYLOFT" tier ec $vols > "$WORK/encode.txt" 2>&1
took=$(python3 -c "print($(date +%s.%N) - $started)")
echo "encoded volumes $vols in $(python3 -c "print(f'{$took:.1f}')") s: $(python3 -c "print(f'{$BLOBS * $SIZE / 1048576 / $took:.1f}')") MiB/s of data (sealing, encoding, spreading, verifying, dropping the copies)"
echo "effective replication factor, erasure-coded: $(factor)"

# 3. Erasure-coded, healthy.
healthy=$(reads erasure-healthy)
echo "$healthy"
check erasure-healthy 0

# 4. A holder down: the one with the most shard bytes, not vs0.
lost=$(for i in $(seq 1 $((SERVERS - 1))); do echo "$(du -sb "$WORK/vs$i" | cut -f1) $i"; done | sort -n | tail -1 | cut -d' ' -f2)
lost_bytes=$(du -sb "$WORK/vs$lost" | cut -f1)
kill -9 "${VOL_PIDS[$lost]}"
left=()
for i in $(seq 0 $((SERVERS - 1))); do [[ $i == "$lost" ]] || left+=("$i"); done
sleep 1
degraded=$(reads erasure-one-down "${left[@]}")
echo "vs$lost SIGKILLed ($((lost_bytes / 1048576)) MiB of shards): $degraded"
check erasure-one-down 0

# 5. Rebuild onto the others, reads meanwhile; the time to every volume
#    healthy again is polled alongside.
# "True" (every volume with blobs healthy), "Rebuilding" (a rebuild runs),
# or "False".
all_healthy() {
  "$HAYLOFT" status --json 2>/dev/null | python3 -c '
import json, sys
volumes = [v for v in json.load(sys.stdin)["volumes"] if v["needles"] > 0]
if any(v["repair_kind"] for v in volumes):
    print("Rebuilding")
else:
    print(all(v["health"] == "ok" for v in volumes))' 2>/dev/null || echo False
}
kill "$DIR_PID"; wait "$DIR_PID" 2>/dev/null || true
started=$(date +%s.%N)
start_directory --repair-after 2s
# (Healthy only after it was seen not to be: a directory that has just
# started may not have marked the dead server yet.)
( seen_down=""
  for _ in $(seq 2400); do
    case "$(all_healthy)" in
      False) seen_down=1 ;;
      Rebuilding) seen_down=1; [[ -s "$WORK/rebuild.at" ]] || date +%s.%N > "$WORK/rebuild.at" ;;
      True) if [[ -n "$seen_down" ]]; then date +%s.%N > "$WORK/healthy.at"; break; fi ;;
    esac
    sleep 0.25
  done ) &
POLLER=$!
during=$(reads erasure-rebuilding "${left[@]}")
echo "while rebuilding: $during"
wait "$POLLER"
[[ -s "$WORK/healthy.at" ]] || { echo "not healthy within 10 minutes"; exit 1; }
took=$(python3 -c "print($(cat "$WORK/healthy.at") - $started)")
echo "every volume healthy again $(python3 -c "print(f'{$took:.1f}')") s after the directory's restart: $(python3 -c "print(f'{$lost_bytes / 1048576 / $took:.1f}')") MiB/s of the lost server's bytes (the directory's start, finding the server dead and repair-after's 2 s included)"
if [[ -s "$WORK/rebuild.at" ]]; then
  rebuilt=$(python3 -c "print($(cat "$WORK/healthy.at") - $(cat "$WORK/rebuild.at"))")
  echo "from the first rebuild seen in the status (polled every 0.25 s) to healthy: $(python3 -c "print(f'{$rebuilt:.1f}')") s, $(python3 -c "print(f'{$lost_bytes / 1048576 / max($rebuilt, 0.25):.1f}')") MiB/s of the lost server's bytes"
fi
check rebuilt 0

python3 - "$replicated" "$healthy" "$degraded" "$during" <<'PY'
import sys
def v(line, key): return float(line.split(f"{key}=")[1].split()[0])
rep, healthy, down, rebuilding = sys.argv[1:]
base = v(rep, "reads_per_s")
for name, line in [("erasure-coded, healthy", healthy), ("one holder down", down), ("during the rebuild", rebuilding)]:
    print(f"{name}: {v(line, 'reads_per_s') / base:.2f}x the replicated reads/s, p99 {v(line, 'p99_ms') / v(rep, 'p99_ms'):.2f}x")
PY
