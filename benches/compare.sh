#!/usr/bin/env bash
# Side-by-side HTTP read benchmark on this machine, in one run, with the same
# load generator (wrk) and the same blob set:
#   1. nginx serving the blobs as one file each (the "filesystem" baseline);
#   2. nginx serving one 4 KiB blob again and again from memory (the HTTP
#      ceiling here);
#   3. hayloft serving the same blobs from its volumes.
# Prints requests/s and p99 latency of each run, the medians and the ratios.
#
# Usage: benches/compare.sh [BLOBS] [SECONDS] [ROUNDS]
#   (defaults: 10000 blobs, 10 s a run, 3 interleaved rounds)
# Installs nginx-light and wrk if missing; builds hayloft in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

BLOBS=${1:-10000}
SECONDS_PER_RUN=${2:-10}
ROUNDS=${3:-3}
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

source benches/lib.sh
NGINX_PORT=$(free_port); DIR_PORT=$(free_port); GRPC_PORT=$(free_port); HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)

# The blob set: BLOBS files of 4 KiB of random bytes.
write_blobs "$WORK/files" "$BLOBS"
head -c 4096 /dev/urandom > "$WORK/one.bin"

# nginx: files from disk (page cache), and one body from memory.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
# The open-file cache holds a descriptor per cached blob.
worker_rlimit_nofile 65536;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  # Descriptors of up to 20,000 blobs stay open (an fd budget an operator
  # would give it; with more blobs than that, some reads open the file).
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
serve_blobs

# One wrk run; prints "requests/s p99-latency-in-ms".
run() { # url [paths]
  local out
  if [ -n "${2:-}" ]; then
    out=$(wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency -s "$WORK/random.lua" "$1" -- "$2")
  else
    out=$(wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency "$1")
  fi
  local errors; errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  if [ -n "$errors" ]; then echo "$1: errors: $errors" >&2; exit 1; fi
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local p99; p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}')
  echo "$rps $p99"
}

echo "4 KiB blobs: $BLOBS, wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s, $ROUNDS rounds, $(nproc) cores" >&2
# Warm the page cache for both, so the run compares servers, not the disk.
find "$WORK/files" -name "*.bin" -exec cat {} + > /dev/null
# Rounds interleave the three servers (in a rotating order), so that a
# noisy neighbour on this shared machine hits all of them alike; the
# medians are compared.
: > "$WORK/results.txt"
names=("nginx-per-file" "nginx-memory" "hayloft")
for round in $(seq "$ROUNDS"); do
  for k in 0 1 2; do
    i=$(( (k + round - 1) % 3 ))
    case $i in
      0) result=$(run "http://127.0.0.1:$NGINX_PORT" "$WORK/nginx-paths.txt") ;;
      1) result=$(run "http://127.0.0.1:$NGINX_PORT/memory") ;;
      2) result=$(run "http://127.0.0.1:$HTTP_PORT" "$WORK/hayloft-paths.txt") ;;
    esac
    printf "round %d  %-16s %10s req/s   p99 %s ms\n" "$round" "${names[$i]}" $result >&2
    echo "$round ${names[$i]} $result" >> "$WORK/results.txt"
  done
done

python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    rnd, name, rps, p99 = line.split()
    runs.setdefault(name, []).append((int(rnd), float(rps), float(p99)))
median = {n: statistics.median(r for _, r, _ in v) for n, v in runs.items()}
p99 = {n: statistics.median(p for _, _, p in v) for n, v in runs.items()}
print()
for n in ("nginx-per-file", "nginx-memory", "hayloft"):
    print(f"{n:16} median {median[n]:10.0f} req/s   median p99 {p99[n]:.2f} ms")
def per_round(a, b):
    ra = {r: x for r, x, _ in runs[a]}
    return [ra[r] / x for r, x, _ in runs[b]]
for base, target in (("nginx-per-file", 1.2), ("nginx-memory", 0.85)):
    rounds = per_round("hayloft", base)
    print(f"hayloft / {base}: {median['hayloft'] / median[base]:.2f}x of medians"
          f"  (rounds {min(rounds):.2f}-{max(rounds):.2f}x; target >= {target}x)")
PY

# Uploads: 4 KiB writes vs a bare tonic server (the gRPC ceiling), 64 MiB
# uploads vs dd conv=fdatasync, on the disk hayloft's data is on.
echo >&2
"$UPLOAD_CEILING" --directory 127.0.0.1:$DIR_PORT --data-dir "$WORK/hayloft" --seconds "$SECONDS_PER_RUN"
