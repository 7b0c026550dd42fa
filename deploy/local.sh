#!/usr/bin/env bash
# Starts Roadie on this machine with zero set-up: builds the binaries, then
# runs roadie-server on 127.0.0.1:50051 and one roadie-worker, both over the
# embedded SQLite store in ./data/roadie.db. Ctrl-C or SIGTERM stops both
# cleanly; when either exits, the other is stopped too.
#
# Any ROADIE__SECTION__KEY variable or a --config FILE argument is passed to both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin roadie-server --bin roadie-worker --bin roadie

pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM

./target/release/roadie-server "$@" &
pids+=($!)
echo "roadie: server starting on ${ROADIE__SERVER__LISTEN:-127.0.0.1:50051} (pid $!); Ctrl-C stops it" >&2

# The worker starts once the server listens: by then the server has created and
# migrated a fresh store, which two processes must not do at the same time on
# SQLite. A listen address set only in a --config file is not seen here; then
# the worker starts after 10 s. A server that dies first ends the script.
listen="${ROADIE__SERVER__LISTEN:-127.0.0.1:50051}"
host="${listen%:*}" port="${listen##*:}"
for _ in $(seq 50); do
  kill -0 "${pids[0]}" 2>/dev/null || { status=0; wait "${pids[0]}" || status=$?; exit "$status"; }
  (: >"/dev/tcp/${host//[\[\]]/}/$port") 2>/dev/null && break
  sleep 0.2
done

./target/release/roadie-worker "$@" &
pids+=($!)
echo "roadie: worker started (pid $!); the CLI is ./target/release/roadie" >&2

# Returns when the first of them exits (or a signal arrives); then stop the other.
status=0
wait -n "${pids[@]}" || status=$?
stop
exit "$status"
