#!/usr/bin/env bash
# Device bytes read per cold GET, cheaply: no ballast, no memory limit.
# Writes N blobs of 4 KiB and N of 64 KiB, and one 64 MiB blob, into a fresh
# `hayloft server`, then for each set: restart the server, sync, drop the
# page cache, HEAD every blob once; the same again and GET every blob once;
# and, each time so, GET 8 distinct 1 MiB ranges of the large blob. Counts
# the device's sectors and read operations (/sys/block/$DEV/stat) and the
# server's own read_bytes (/proc/PID/io) around each pass.
#
#   benches/cold-get-bytes.sh BINARY [N]        (as root: drops the page cache)
#
# The device counters see every process on the machine (another build, say):
# the server's read_bytes are its own, which is why both are printed.
set -euo pipefail
BIN=${1:?usage: cold-get-bytes.sh BINARY [N]}
N=${2:-3000}
DEV=${DEV:-vda}
PORT=${PORT:-19300}
work=$(mktemp -d /tmp/cold-get.XXXXXX)
files=$(mktemp -d /dev/shm/cold-get.XXXXXX)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work" "$files"
}
trap cleanup EXIT

start_server() {
    "$BIN" server --data-dir "$work/data" \
        --directory-listen 127.0.0.1:$((PORT + 30)) --grpc-listen 127.0.0.1:$((PORT + 31)) \
        --http-listen 127.0.0.1:$((PORT + 80)) --metrics-listen 127.0.0.1:$((PORT + 90)) \
        >>"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -s -o /dev/null "$http/" && break; sleep 0.1; done
}
# A new process maps nothing yet: pages a read through the map left mapped
# would survive drop_caches (and the next pass would read from memory).
restart_server() { kill "$server"; wait "$server" || true; start_server; }
http=http://127.0.0.1:$((PORT + 80))
start_server

put() { xargs -n 200 "$BIN" put --directory 127.0.0.1:$((PORT + 30)); }
stat() { awk '{print $1, $3}' "/sys/block/$DEV/stat"; }
server_read() { awk '/^read_bytes/ {print $2}' "/proc/$server/io"; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
report() { # label gets bytes_per_get before_stat after_stat server_before server_after
    local label=$1 gets=$2 size=$3
    read -r ops0 sec0 <<<"$4"; read -r ops1 sec1 <<<"$5"
    awk -v l="$label" -v g="$gets" -v s="$size" -v o=$((ops1 - ops0)) -v b=$(((sec1 - sec0) * 512)) \
        -v r=$(($7 - $6)) 'BEGIN {
        printf "%-28s %6d GETs  device: %8.1f KiB/GET (%.2fx), %.2f reads/GET  server read_bytes: %8.1f KiB/GET (%.2fx)\n",
            l, g, b / g / 1024, b / g / s, o / g, r / g / 1024, r / g / s }'
}

for size in 4096 65536; do
    mkdir -p "$files/$size"
    for i in $(seq "$N"); do head -c "$size" /dev/urandom >"$files/$size/$i.bin"; done
    (cd "$files/$size" && ls | put) >"$work/ids.$size"
    rm -rf "${files:?}/$size"
    for method in HEAD GET; do
        flag=; [ "$method" = HEAD ] && flag=-I
        restart_server
        cold
        s0=$(stat); r0=$(server_read)
        xargs -P 16 -I{} curl -s -o /dev/null $flag -w '%{http_code}\n' "$http/{}" <"$work/ids.$size" >"$work/codes.$size"
        s1=$(stat); r1=$(server_read)
        bad=$(grep -vc '^200$' "$work/codes.$size" || true)
        report "$method $size B (${bad} not 200)" "$(wc -l <"$work/ids.$size")" "$size" "$s0" "$s1" "$r0" "$r1"
    done
done

head -c $((64 << 20)) /dev/urandom >"$files/large.bin"
large=$(cd "$files" && echo large.bin | put)
# Each range cold: the page cache dropped before each.
ops=0; sec=0; rb=0; bad=0
for k in $(seq 0 7); do
    start=$((k * (8 << 20) + 12345)); end=$((start + (1 << 20) - 1))
    restart_server
    cold
    read -r o0 c0 <<<"$(stat)"; r0=$(server_read)
    code=$(curl -s -o /dev/null -w '%{http_code}' -r "$start-$end" "$http/$large")
    read -r o1 c1 <<<"$(stat)"; r1=$(server_read)
    [ "$code" = 206 ] || bad=$((bad + 1))
    ops=$((ops + o1 - o0)); sec=$((sec + c1 - c0)); rb=$((rb + r1 - r0))
done
report "1 MiB range of 64 MiB (${bad} not 206)" 8 $((1 << 20)) "0 0" "$ops $sec" 0 "$rb"
