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

./target/release/roadie-worker "$@" &
pids+=($!)
echo "roadie: worker started (pid $!); the CLI is ./target/release/roadie" >&2

# Returns when the first of them exits (or a signal arrives); then stop the other.
status=0
wait -n "${pids[@]}" || status=$?
stop
exit "$status"
