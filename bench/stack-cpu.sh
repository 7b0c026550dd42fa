#!/usr/bin/env bash
# Where a Put's CPU goes, process by process, against etcd's: the same Put
# load of new 1 KiB keys (64 callers, 5 s) against etcd, Roadie on SQLite
# and Roadie on Postgres, in interleaved rounds, each row the median of its
# rounds. For every target: calls/s, the machine's busy share, and the CPU
# time per call (user and system, µs) of the load generator, the target's
# process (etcd, or roadie-server with SQLite inside it) and every Postgres
# process together. A Put ratio against etcd is bounded by these: on two
# cores a target whose calls cost more CPU, or that leaves the cores idle
# while its callers wait, answers fewer calls.
#
#   bash bench/stack-cpu.sh [DIR] [ROUNDS]
#
# DIR holds roadie-bench and roadie-server (target/release unless given);
# etcd is Debian's etcd-server, on the PATH. Postgres at 127.0.0.1:5432
# (ROADIE_TEST_POSTGRES_URL), a fresh database per round. Best run with the
# machine otherwise idle: the Postgres column counts every Postgres process.
set -euo pipefail
dir=${1:-target/release} rounds=${2:-3}
admin=${ROADIE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)
server=""
finish() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap finish EXIT
ticks=$(getconf CLK_TCK)

busy_and_all() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
process_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
postgres_ticks() {
  local pid total=0
  for pid in $(pgrep -u postgres || true); do
    total=$((total + $(process_ticks "$pid" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# One round against $1: prints "calls/s busy% loadgen server postgres".
measure_once() {
  local target=$1 addr scenario db=""
  case $target in
    etcd)
      rm -rf "$work/etcd"
      etcd --name bench --data-dir "$work/etcd" \
        --listen-client-urls http://127.0.0.1:52379 --advertise-client-urls http://127.0.0.1:52379 \
        --listen-peer-urls http://127.0.0.1:52380 --initial-advertise-peer-urls http://127.0.0.1:52380 \
        --initial-cluster bench=http://127.0.0.1:52380 --log-level error >"$work/target.log" 2>&1 &
      server=$!
      addr=127.0.0.1:52379 scenario=etcd-put
      for _ in $(seq 1 100); do
        curl -sf http://127.0.0.1:52379/health >/dev/null 2>&1 && break
        sleep 0.1
      done
      ;;
    sqlite | postgres)
      local url
      if [ "$target" = sqlite ]; then
        rm -f "$work"/roadie.db*
        url="sqlite://$work/roadie.db"
      else
        db="roadie_stack_$$_$RANDOM"
        psql "$admin" -qc "CREATE DATABASE $db"
        url="${admin%/*}/$db"
      fi
      printf '[server]\nlisten = "127.0.0.1:50183"\n[store]\nurl = "%s"\n' "$url" >"$work/roadie.toml"
      "$dir/roadie-server" --config "$work/roadie.toml" >"$work/target.log" 2>&1 &
      server=$!
      addr=127.0.0.1:50183 scenario=put
      for _ in $(seq 1 100); do
        grep -q "roadie-server listening" "$work/target.log" && break
        sleep 0.1
      done
      ;;
  esac
  local machine0 target0 postgres0 machine1 target1 postgres1
  machine0=$(busy_and_all) target0=$(process_ticks "$server") postgres0=$(postgres_ticks)
  /usr/bin/time -f "%U %S" -o "$work/loadgen" "$dir/roadie-bench" load --addr "$addr" \
    --scenario "$scenario" --duration 5s --warmup 0s --json >"$work/load.json" 2>"$work/load.err" ||
    { echo "the $target load failed:" >&2; cat "$work/load.err" "$work/target.log" >&2; exit 1; }
  machine1=$(busy_and_all) target1=$(process_ticks "$server") postgres1=$(postgres_ticks)
  kill "$server" && wait "$server" 2>/dev/null || true
  server=""
  [ -z "$db" ] || psql "$admin" -qc "DROP DATABASE $db WITH (FORCE)"
  python3 - "$work/load.json" "$work/loadgen" "$ticks" $machine0 $machine1 \
    "$target0" "$target1" "$postgres0" "$postgres1" <<'EOF'
import json, sys
load = json.load(open(sys.argv[1]))
calls = load["calls"] - load["errors"]
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
tick = 1 / float(sys.argv[3])
busy0, all0, busy1, all1, t0, t1, p0, p1 = map(int, sys.argv[4:12])
per_call = lambda seconds: seconds * 1e6 / calls
print(round(load["throughput"]), round((busy1 - busy0) / (all1 - all0) * 100),
      round(per_call(user + system), 1), round(per_call((t1 - t0) * tick), 1),
      round(per_call((p1 - p0) * tick), 1))
EOF
}

targets="etcd sqlite postgres"
for target in $targets; do : >"$work/$target.rows"; done
for round in $(seq 1 "$rounds"); do
  for target in $targets; do
    row=$(measure_once "$target")
    echo "round $round, $target: $row" >&2
    echo "$row" >>"$work/$target.rows"
  done
done
python3 - "$work" $targets <<'EOF'
import statistics, sys
work, targets = sys.argv[1], sys.argv[2:]
print("| target | calls/s | vs etcd | machine busy % | load generator µs/call | target process µs/call | Postgres µs/call | all µs/call |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
rows = {t: [list(map(float, l.split())) for l in open(f"{work}/{t}.rows") if l.strip()] for t in targets}
med = {t: [statistics.median(r[i] for r in rows[t]) for i in range(5)] for t in targets}
names = {"etcd": "etcd", "sqlite": "roadie (sqlite)", "postgres": "roadie (postgres)"}
for t in targets:
    calls, busy, loadgen, target, postgres = med[t]
    print(f"| {names[t]} | {calls:.0f} | {calls / med['etcd'][0]:.2f} | {busy:.0f} | {loadgen:.1f} | {target:.1f} | {postgres:.1f} | {loadgen + target + postgres:.1f} |")
EOF
