#!/usr/bin/env bash
# Starts Roadie on this machine with zero set-up: builds the binaries, then
# runs roadie-server on 127.0.0.1:50051 over the embedded SQLite store in
# ./data/roadie.db. Stops cleanly on Ctrl-C or SIGTERM.
#
# Any ROADIE__SECTION__KEY variable or a --config FILE argument is passed on.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin roadie-server --bin roadie

server_pid=""
stop() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null || true
  wait
}
trap stop INT TERM

./target/release/roadie-server "$@" &
server_pid=$!
echo "roadie: server starting on ${ROADIE__SERVER__LISTEN:-127.0.0.1:50051} (pid $server_pid); Ctrl-C stops it" >&2
echo "roadie: the CLI is ./target/release/roadie" >&2
wait "$server_pid"
