# Shared by the benchmarks (compare.sh, cpu-per-request.sh, upload-cpu.sh, erasure.sh, regions.sh,
# replication.sh): source it after setting WORK (a scratch directory) and
# HAYLOFT (the binary).

# Daemons started by the script, stopped by stop_all (kill, then wait).
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# write_blobs DIR N [SIZE]: N files of SIZE (default 4 KiB) random bytes
# in DIR.
write_blobs() {
  mkdir -p "$1"
  python3 - "$1" "$2" "${3:-4096}" <<'PY'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(root, f"{i:06d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
}

# serve_blobs: starts `hayloft server` (data in $WORK/hayloft, on
# DIR_PORT / GRPC_PORT / HTTP_PORT / METRICS_PORT, pid in HAYLOFT_PID),
# uploads every file of $WORK/files with `hayloft put`, and writes the
# request paths of both servers ($WORK/hayloft-paths.txt,
# $WORK/nginx-paths.txt, same order) and $WORK/random.lua (wrk: a random
# path of the file given after --).
serve_blobs() {
  "$HAYLOFT" server --data-dir "$WORK/hayloft" --directory-listen 127.0.0.1:$DIR_PORT \
    --grpc-listen 127.0.0.1:$GRPC_PORT --http-listen 127.0.0.1:$HTTP_PORT \
    --metrics-listen 127.0.0.1:$METRICS_PORT > "$WORK/hayloft.log" 2>&1 &
  HAYLOFT_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && break; sleep 0.1; done
  sleep 1
  # In batches: a glob of 100,000 names is past the argument-list limit.
  ( cd "$WORK/files" && ls | HAYLOFT_DIRECTORY=127.0.0.1:$DIR_PORT xargs -n 5000 "$HAYLOFT" put ) > "$WORK/ids.txt"
  sed "s|^|/|" "$WORK/ids.txt" > "$WORK/hayloft-paths.txt"
  (cd "$WORK/files" && ls) | sed "s|^|/|" > "$WORK/nginx-paths.txt"
  # Requests are formatted once, in init, so that the load generator spends
  # its CPU (shared with the server on this machine) on sending, not on Lua.
  cat > "$WORK/random.lua" <<'LUA'
local requests = {}
init = function(args)
  for line in io.lines(args[1]) do requests[#requests + 1] = wrk.format("GET", line) end
  math.randomseed(os.time())
end
request = function()
  return requests[math.random(#requests)]
end
LUA
}
