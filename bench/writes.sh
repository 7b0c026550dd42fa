#!/usr/bin/env bash
# The write path side by side in one run: the same release roadie-server with
# store.write_batch = 1 (each Put its own transaction, as before group commit)
# and with the default (256), and etcd (Debian's etcd-server, single node, a
# fresh private data directory on loopback ports) as the ceiling, all driven
# by roadie-bench at 64 concurrent callers over 4 connections with new 1 KiB
# keys; Roadie also with 9 Get hits to 1 Put. SQLite and Postgres, three
# rounds, interleaved; prints medians and ratios.
#   bash bench/writes.sh
#   DURATION=10s ROUNDS=5 bash bench/writes.sh
# Needs Postgres at 127.0.0.1:5432 (or ROADIE_TEST_POSTGRES_URL; a fresh
# database per server); installs etcd-server when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-5s}
rounds=${ROUNDS:-3}
pg=${ROADIE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=target/bench/writes
mkdir -p "$out"
if ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
cargo build --release --locked -p roadie-bench -p roadie-server -p roadie-client

port=50091
serve() { # backend batch -> starts a server, prints its pid
  local backend=$1 batch=$2 url
  if [ "$backend" = sqlite ]; then
    rm -rf "$out/db" && mkdir -p "$out/db"
    url="sqlite://$PWD/$out/db/roadie.db"
  else
    local db="roadie_bench_gc_$$_$RANDOM"
    psql "$pg" -qc "CREATE DATABASE $db"
    url="${pg%/*}/$db"
    echo "$db" > "$out/pgdb"
  fi
  ROADIE__STORE__URL="$url" ROADIE__SERVER__LISTEN="127.0.0.1:$port" ROADIE__ADMIN__LISTEN="127.0.0.1:0" \
    ROADIE__STORE__WRITE_BATCH="$batch" ROADIE__LOG__LEVEL=warn \
    ./target/release/roadie-server >"$out/server.log" 2>&1 &
  echo $!
}
stop() { # pid backend
  kill "$1"; wait "$1" 2>/dev/null || true
  if [ "$2" = postgres ]; then psql "$pg" -qc "DROP DATABASE IF EXISTS $(cat "$out/pgdb") WITH (FORCE)"; fi
}
ready() { for _ in $(seq 1 100); do ./target/release/roadie --server "http://127.0.0.1:$port" health >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

etcd_put() { # round: a fresh single-node etcd, one load, then gone
  rm -rf "$out/etcd"
  etcd --name bench --data-dir "$out/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster bench=http://127.0.0.1:23800 --log-level error >"$out/etcd.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do timeout 1 bash -c '</dev/tcp/127.0.0.1/23790' 2>/dev/null && break; sleep 0.1; done
  ./target/release/roadie-bench load --addr 127.0.0.1:23790 --scenario etcd-put \
    --duration "$duration" --json > "$out/run.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$out/run.json" "$1" etcd - put >> "$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("\t".join(sys.argv[2:] + [str(r["throughput"]), str(r["p99_us"] / 1000), str(r["errors"])]))
PY
}

results="$out/results.tsv"
: > "$results"
for round in $(seq 1 "$rounds"); do
  etcd_put "$round"
  for backend in sqlite postgres; do
    for batch in 1 256; do
      for scenario in put mixed; do
        pid=$(serve "$backend" "$batch")
        ready || { cat "$out/server.log"; exit 1; }
        ./target/release/roadie-bench load --addr "127.0.0.1:$port" --scenario "$scenario" \
          --duration "$duration" --json > "$out/run.json"
        stop "$pid" "$backend"
        python3 - "$out/run.json" "$round" "$backend" "$batch" "$scenario" >> "$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("\t".join(sys.argv[2:] + [str(r["throughput"]), str(r["p99_us"] / 1000), str(r["errors"])]))
PY
      done
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
med = {}
for _, backend, batch, scenario, rate, p99, errors in rows:
    assert errors == "0", f"{backend} {scenario} write_batch {batch}: {errors} errors"
    med.setdefault((backend, scenario, batch), []).append((float(rate), float(p99)))
etcd = [r for r, _ in med[("etcd", "put", "-")]]
etcd_rate = statistics.median(etcd)
etcd_p99 = statistics.median(p for _, p in med[("etcd", "put", "-")])
print(f"etcd Put of new keys: {etcd_rate:.0f} calls/s, p99 {etcd_p99:.1f} ms")
print()
print("| backend | load | write_batch 1: calls/s | p99 ms | write_batch 256: calls/s | p99 ms | 256 vs 1 | 256 vs etcd Put |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for backend in ("sqlite", "postgres"):
    for scenario in ("put", "mixed"):
        one = med[(backend, scenario, "1")]
        many = med[(backend, scenario, "256")]
        r1, p1 = statistics.median(r for r, _ in one), statistics.median(p for _, p in one)
        r2, p2 = statistics.median(r for r, _ in many), statistics.median(p for _, p in many)
        versus = f"{r2 / etcd_rate:.2f}x" if scenario == "put" else ""
        print(f"| {backend} | {scenario} | {r1:.0f} | {p1:.1f} | {r2:.0f} | {p2:.1f} | {r2 / r1:.2f}x | {versus} |")
PY
