#!/usr/bin/env bash
# Two builds side by side: the same load against each, in interleaved
# rounds (old, new, old, new, ...), with the median of each and their ratio.
# A change's own effect, read on a shared machine whose speed drifts within
# minutes: a ratio of interleaved medians, not two runs an hour apart.
#
#   bash bench/ab.sh OLD_DIR NEW_DIR MEASURE [ROUNDS]
#
# OLD_DIR and NEW_DIR each hold roadie-bench, roadie-server and roadie-worker
# of one build (copy target/release/roadie-{bench,server,worker} aside
# before rebuilding). An older commit built in a `git worktree` with this
# checkout's CARGO_TARGET_DIR leaves cargo believing this checkout's release
# build is fresh (its records name the worktree's sources): run
# `cargo clean --release -p` for every workspace package before building
# the new side, and check the two binaries differ. MEASURE is one of:
#   put-sqlite, put-postgres   Put of new 1 KiB keys, 64 callers, 5 s (calls/s)
#   cpu-put-sqlite, cpu-put-postgres, cpu-get-sqlite, cpu-get-postgres
#                              the server's CPU time per call (user and
#                              system, µs) of Put of new keys or of Get hits
#                              at a fixed rate (an open loop of
#                              ROADIE_AB_RATE calls/s, 5 000 unless set, for
#                              5 s; the seeding of a Get load's keys
#                              included): what a change costs or saves per
#                              call, which the machine's drift moves far less
#                              than a throughput
#   budget-put-sqlite, budget-put-postgres
#                              Put of new 1 KiB keys stored as written
#                              (uncompressed) into a policy of 16 MiB, 64
#                              callers, 10 s: the policy at its budget, as a
#                              full cache is, evicted while the writes go on
#                              (calls/s, p99 and p99.9 ms)
#   mixed-sqlite, mixed-postgres
#                              Get hits, then 9 Get hits : 1 Put of the same
#                              keys, on one server with its hot tier, 64
#                              callers, 5 s each (calls/s, and mixed/Get)
#   fetch                      Fetch (wait) overhead over a plain GET, p50 ms,
#                              SQLite then Postgres (the suite's fetch part)
#   queue                      no-op jobs, insert to completion (jobs/s):
#                              Postgres then SQLite, each with one worker
#                              process of 128 slots and with two of 64 (the
#                              suite's queue part)
# Postgres at 127.0.0.1:5432 (ROADIE_TEST_POSTGRES_URL), a fresh database
# per round. A side's directory may also hold `before.sql`, run against
# that Postgres (`psql -f`) before each of its rounds: the same binaries
# on both sides, and a database setting compared, e.g.
#   off/before.sql: ALTER SYSTEM SET synchronous_commit = off; SELECT pg_reload_conf();
#   on/before.sql:  ALTER SYSTEM RESET synchronous_commit; SELECT pg_reload_conf();
set -euo pipefail
old=$1 new=$2 measure=$3 rounds=${4:-5}
admin=${ROADIE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)
# Whatever happens, the database is left as the old side's before.sql sets it.
finish() {
  rm -rf "$work"
  [ ! -f "$old/before.sql" ] || psql "$admin" -qAt -f "$old/before.sql" >/dev/null
}
trap finish EXIT

# One figure (or two, space-separated) of the build in $1.
measure_once() {
  local dir=$1
  case $measure in
    put-sqlite | put-postgres | budget-put-sqlite | budget-put-postgres | mixed-sqlite | mixed-postgres | cpu-put-sqlite | cpu-put-postgres | cpu-get-sqlite | cpu-get-postgres)
      local url port=50181 db=""
      if [ "${measure##*-}" = sqlite ]; then
        rm -f "$work"/roadie.db*
        url="sqlite://$work/roadie.db"
      else
        db="roadie_ab_$$_$RANDOM"
        psql "$admin" -qc "CREATE DATABASE $db"
        url="${admin%/*}/$db"
      fi
      printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\nurl = "%s"\n' "$port" "$url" >"$work/roadie.toml"
      [ "${measure%-*}" != budget-put ] ||
        printf 'compress_min_bytes = 0\n[policies.generic]\nmax_bytes = 16777216\n' >>"$work/roadie.toml"
      "$dir/roadie-server" --config "$work/roadie.toml" >"$work/server.log" 2>&1 &
      local server=$!
      # The port answers health checks alone until the store is open: wait
      # for the whole server.
      for _ in $(seq 1 100); do
        grep -q "roadie-server listening" "$work/server.log" && break
        sleep 0.1
      done
      local scenarios figures=()
      case ${measure%-*} in
        put) scenarios=put ;;
        budget-put)
          "$dir/roadie-bench" load --addr "127.0.0.1:$port" --scenario put \
            --duration 10s --warmup 1s --json 2>"$work/bench.err" |
            python3 -c 'import json,sys; r = json.load(sys.stdin); print(round(r["throughput"]), r["p99_us"] / 1000, r["p999_us"] / 1000)' ||
            { echo "the put load failed:" >&2; cat "$work/bench.err" "$work/server.log" >&2; kill "$server"; exit 1; }
          kill "$server" && wait "$server" 2>/dev/null || true
          [ -z "$db" ] || psql "$admin" -qc "DROP DATABASE $db WITH (FORCE)"
          return
          ;;
        mixed) scenarios="get-hit mixed" ;;
        cpu-put | cpu-get)
          local scenario=put rate=${ROADIE_AB_RATE:-5000} before after
          [ "${measure%-*}" = cpu-put ] || scenario=get-hit
          # utime and stime of the server, in clock ticks.
          before=$(awk '{print $14 + $15}' "/proc/$server/stat")
          local calls
          calls=$("$dir/roadie-bench" load --addr "127.0.0.1:$port" --scenario "$scenario" \
            --rate "$rate" --duration 5s --warmup 0s --json 2>"$work/bench.err" |
            python3 -c 'import json,sys; r = json.load(sys.stdin); print(r["calls"] - r["errors"])') ||
            { echo "the $scenario load failed:" >&2; cat "$work/bench.err" "$work/server.log" >&2; kill "$server"; exit 1; }
          after=$(awk '{print $14 + $15}' "/proc/$server/stat")
          python3 -c "print(round(($after - $before) / $(getconf CLK_TCK) * 1e6 / $calls, 1))"
          kill "$server" && wait "$server" 2>/dev/null || true
          [ -z "$db" ] || psql "$admin" -qc "DROP DATABASE $db WITH (FORCE)"
          return
          ;;
      esac
      for scenario in $scenarios; do
        figures+=("$("$dir/roadie-bench" load --addr "127.0.0.1:$port" --scenario "$scenario" \
          --duration 5s --warmup 1s --json 2>"$work/bench.err" |
          python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput"]))')") ||
          { echo "the $scenario load failed:" >&2; cat "$work/bench.err" "$work/server.log" >&2; kill "$server"; exit 1; }
      done
      if [ "${#figures[@]}" = 2 ]; then
        echo "${figures[0]} ${figures[1]} $(python3 -c "print(round(${figures[1]} / ${figures[0]}, 3))")"
      else
        echo "${figures[0]}"
      fi
      kill "$server" && wait "$server" 2>/dev/null || true
      [ -z "$db" ] || psql "$admin" -qc "DROP DATABASE $db WITH (FORCE)"
      ;;
    fetch)
      "$dir/roadie-bench" suite --parts fetch --rounds 1 --duration 3s --out "$work/out" 2>/dev/null |
        awk '/^Fetch overhead/ {printf "%s ", $NF == "ms" ? $(NF-1) : $NF} END {print ""}'
      ;;
    queue)
      "$dir/roadie-bench" suite --parts queue --rounds 1 --out "$work/out" 2>/dev/null |
        awk -F'|' '/^\| roadie \(/ {gsub(/ /, "", $6); printf "%s ", $6} END {print ""}'
      ;;
    *) echo "unknown measure $measure" >&2; exit 2 ;;
  esac
}

: >"$work/old" && : >"$work/new"
for round in $(seq 1 "$rounds"); do
  for side in old new; do
    dir=${!side}
    [ ! -f "$dir/before.sql" ] || psql "$admin" -qAt -f "$dir/before.sql" >/dev/null
    figure=$(measure_once "$dir")
    echo "$side round $round: $figure"
    echo "$figure" >>"$work/$side"
  done
done
python3 - "$work/old" "$work/new" "$measure" <<'EOF'
import statistics, sys
old = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
new = [list(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
mixed = ["Get hits calls/s", "mixed calls/s", "mixed/Get"]
names = {"fetch": ["sqlite ms", "postgres ms"],
         "queue": ["postgres jobs/s, one worker process", "postgres jobs/s, two", "sqlite jobs/s, one worker process", "sqlite jobs/s, two"],
         "mixed-sqlite": mixed, "mixed-postgres": mixed,
         "budget-put-sqlite": ["calls/s", "p99 ms", "p99.9 ms"],
         "budget-put-postgres": ["calls/s", "p99 ms", "p99.9 ms"]}.get(
    sys.argv[3], ["server CPU µs per call"] if sys.argv[3].startswith("cpu-") else ["calls/s"])
for i, name in enumerate(names):
    a = statistics.median(r[i] for r in old)
    b = statistics.median(r[i] for r in new)
    print(f"{sys.argv[3]} {name}: old median {a:g}, new median {b:g}, new/old {b / a:.2f}")
EOF
