#!/usr/bin/env bash
# Resident memory of one roadie-server build on SQLite: idle, after 6 s of
# Puts of new keys, after 6 s of Get hits, and its peak (VmHWM), in kB.
# Two builds side by side, e.g. an allocator change:
#
#   bash bench/rss.sh DIR [DIR ...]
#
# Each DIR holds roadie-server and roadie-bench of one build (as for
# bench/ab.sh). deploy/measure-rss.sh measures the image instead.
set -euo pipefail
port=50192
work=$(mktemp -d)
server=
finish() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap finish EXIT

rss() { awk -v field="$1:" '$1 == field {print $2}' "/proc/$server/status"; }

for dir in "$@"; do
  rm -f "$work"/roadie.db*
  printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\nurl = "sqlite://%s/roadie.db"\n' "$port" "$work" >"$work/roadie.toml"
  "$dir/roadie-server" --config "$work/roadie.toml" >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    grep -q "roadie-server listening" "$work/server.log" && break
    sleep 0.1
  done
  idle=$(rss VmRSS)
  "$dir/roadie-bench" load --addr "127.0.0.1:$port" --scenario put --duration 6s --warmup 0s >/dev/null
  put=$(rss VmRSS)
  "$dir/roadie-bench" load --addr "127.0.0.1:$port" --scenario get-hit --duration 6s --warmup 0s >/dev/null
  get=$(rss VmRSS)
  peak=$(rss VmHWM)
  kill "$server" && wait "$server" 2>/dev/null || true
  server=
  echo "$dir: idle $idle kB, after Puts $put, after Gets $get, peak $peak"
done
