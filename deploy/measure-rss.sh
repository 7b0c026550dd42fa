#!/usr/bin/env bash
# Resident memory of roadie-server and roadie-worker as the image runs them,
# idle and under load, for the requests and limits in deploy/k8s:
#
#   bash deploy/measure-rss.sh            (after deploy/verify-image.sh built the image)
#
# Runs a server and a worker container (default settings, Postgres store, a
# loopback upstream answering every path with 1 KiB of JSON) and drives them
# with roadie-bench: Get hits, Puts of new keys, and cold Fetches that the
# worker fetches, then Get hits over more than the hot tier holds. Prints each process's RSS after each phase and its peak
# (VmHWM) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=deploy/containers.sh
source deploy/containers.sh
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-15}

podman image exists "$TAG" || { echo "measure-rss: no image $TAG: run deploy/verify-image.sh first" >&2; exit 1; }
cargo build --quiet --locked -p roadie-bench
bench=target/debug/roadie-bench

run_id=$$
database=roadie_rss_$run_id
server=roadie-rss-server-$run_id
worker=roadie-rss-worker-$run_id
upstream_pid=
cleanup() {
  podman rm -f "$server" "$worker" >/dev/null 2>&1 || true
  [[ -n $upstream_pid ]] && kill "$upstream_pid" 2>/dev/null || true
  psql "$PGURL" -qc "drop database if exists $database with (force)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

grpc=$(free_port)
server_admin=$(free_port)
worker_admin=$(free_port)
upstream=$(free_port)

python3 - "$upstream" <<'PY' &
import http.server, sys
BODY = b'{"id": "x", "payload": "' + b"r" * 1000 + b'"}'
class Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Answer).serve_forever()
PY
upstream_pid=$!

psql "$PGURL" -qc "create database $database"
env=(
  -e ROADIE__STORE__URL="${PGURL%/*}/$database"
  -e ROADIE__SERVER__LISTEN="127.0.0.1:$grpc"
  -e ROADIE__PROVIDERS__BENCH__BASE_URL="http://127.0.0.1:$upstream/"
  -e ROADIE__PROVIDERS__BENCH__ALLOW_PRIVATE=true
  -e ROADIE__PROVIDERS__BENCH__RATE_PER_SECOND=100000
  -e ROADIE__PROVIDERS__BENCH__BURST=1000
  # As deploy/k8s/configmap.yaml bounds it: the hot tier is most of what
  # the server's memory can grow by.
  -e ROADIE__HOT_TIER__MAX_BYTES=134217728
  # Room in the store for what the last phase writes (the generic policy's
  # 30 MiB budget would evict it before the hot tier could fill).
  -e ROADIE__POLICIES__GENERIC__MAX_BYTES=1073741824
)
podman run -d "${RUN[@]}" --name "$server" --network host "${env[@]}" \
  -e ROADIE__ADMIN__LISTEN="127.0.0.1:$server_admin" "$TAG" >/dev/null
podman run -d "${RUN[@]}" --name "$worker" --network host "${env[@]}" \
  -e ROADIE__ADMIN__LISTEN="127.0.0.1:$worker_admin" "$TAG" roadie-worker >/dev/null
for _ in $(seq 1 120); do
  podman exec "$server" roadie --server "http://127.0.0.1:$grpc" health >/dev/null 2>&1 && break
  sleep 0.5
done

pid() { podman inspect --format '{{.State.Pid}}' "$1"; }
kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$(pid "$1")/status"; }
row() { printf '%-28s %10s %10s\n' "$1" "$(($(kib "$server" VmRSS) / 1024)) MiB" "$(($(kib "$worker" VmRSS) / 1024)) MiB"; }

printf '%-28s %10s %10s\n' "RSS after" "server" "worker"
row "start (idle)"
load() {
  "$bench" load --addr "127.0.0.1:$grpc" --duration "${SECONDS_PER_PHASE}s" --concurrency 64 "$@" | sed 's/^/  /'
}
load --scenario get-hit --keys 10000
row "get-hit, 64 callers"
load --scenario put
row "put of new keys, 64 callers"
load --scenario fetch-cold --provider bench
row "fetch-cold, 64 callers"
load --scenario mixed --keys 10000
row "mixed 9 get : 1 put"
# 10 000 values of 16 KiB (160 MiB) read over and over: the hot tier fills
# to its bound and evicts.
load --scenario get-hit --keys 10000 --value-bytes 16384
row "hot tier full (16 KiB values)"
printf '%-28s %10s %10s\n' "peak (VmHWM)" "$(($(kib "$server" VmHWM) / 1024)) MiB" "$(($(kib "$worker" VmHWM) / 1024)) MiB"
echo "(image $TAG, ${SECONDS_PER_PHASE}s per phase; reproduce: bash deploy/measure-rss.sh)"
