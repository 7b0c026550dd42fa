#!/usr/bin/env bash
# Every comparison of BENCHMARKS.md in one run on this machine:
#   bash bench/run.sh                 # everything (arguments go to `roadie-bench suite`)
#   bash bench/run.sh --parts reads   # one part: reads, writes, scenarios, watchers, fetch, queue, scale
# Needs Postgres at 127.0.0.1:5432 (or ROADIE_TEST_POSTGRES_URL) and Redis at
# 127.0.0.1:6379; starts them the way this machine does when they are down.
# Installs etcd (Debian's etcd-server) when it is missing: the writes part
# starts its own single-node etcd on a fresh data directory.
# Builds the release binaries and River's CLI (riverqueue-cli 0.5, into
# target/bench-tools) first; both are kept for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"

up() { timeout 3 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }
if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! up 6379 && command -v redis-server >/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
for port in 5432 6379; do
  for _ in $(seq 1 30); do up "$port" && break; sleep 1; done
  up "$port" || { echo "FATAL: nothing answers on 127.0.0.1:$port (Postgres 5432, Redis 6379)" >&2; exit 1; }
done
if ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
export ROADIE_TEST_POSTGRES_URL="${ROADIE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export ROADIE_REQUIRE_POSTGRES=1

started=$(date +%s)
echo "=== build (release) ==="
cargo build --release --locked -p roadie-bench -p roadie-server -p roadie-worker
cargo bench --locked -p roadie-server --bench propagation --no-run
tools=target/bench-tools
if [ ! -x "$tools/bin/riverqueue" ]; then
  cargo install --locked --quiet riverqueue-cli --version 0.5.0 --root "$tools"
fi
built=$(date +%s)

{
  echo "# machine"
  echo
  echo "- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "- $(free -g | awk '/Mem:/ {print $2}') GiB memory, Linux $(uname -r)"
  echo "- $(rustc --version), $(psql --version 2>/dev/null || echo 'psql: none'), $(redis-server --version 2>/dev/null | cut -d' ' -f1-3), $(etcd --version | head -n1)"
  echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
} | tee "$out/machine.md"

./target/release/roadie-bench suite --riverqueue "$tools/bin/riverqueue" --out "$out" "$@" \
  | tee "$out/suite.md"

echo
echo "## Change propagation: commit to watching client, across two server processes"
echo
cargo bench --locked -p roadie-server --bench propagation 2>/dev/null | tee "$out/propagation.txt"

finished=$(date +%s)
echo
echo "built in $((built - started)) s, measured in $((finished - built)) s; tables in $out/"
