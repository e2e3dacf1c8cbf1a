#!/usr/bin/env bash
# What the cache triggers cost a writer, in CPU instructions per write: the workloads of
# trigger_cost.sh run by a single-user Postgres backend under valgrind's callgrind, which counts
# instructions, so the numbers repeat to about 1 % whatever else the machine is doing (pgbench
# TPS on this shared 2-core machine moves by ±5 %). Use it to compare trigger designs; use
# trigger_cost.sh for what the instructions turn into at 16 writers.
#
#   load_tests/trigger_instructions.sh            # 100 and 600 writes per workload
#   FEW=200 MANY=1200 load_tests/trigger_instructions.sh
#
# Each workload runs FEW and then MANY writes, each write its own transaction; the difference
# divided by MANY - FEW is the cost of one write without start-up. Runs a private cluster
# (initdb in a temporary directory, on a free port), never the shared server.
# shellcheck source=load_tests/trigger_setup.sh
source "$(dirname "$0")/trigger_setup.sh"

FEW="${FEW:-100}"
MANY="${MANY:-600}"
PG_BIN="${PG_BIN:-$(pg_config --bindir)}"
work="$(mktemp -d)"
data="$work/data"
trap '[ -f "$data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$data" stop -m immediate >/dev/null; rm -rf "$work"' EXIT

# Postgres refuses to run as root: run the cluster as the postgres user then.
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --quiet --bin openrisk-api
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_postgres "$PG_BIN/initdb" -D "$data" -A trust -U postgres >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$data" -o "-p $port -k $work -c listen_addresses=127.0.0.1" \
    -l "$work/postgres.log" start -w >/dev/null
trigger_setup "postgres://postgres@127.0.0.1:$port/postgres" "$TRIGGER_BENCH_DB" "$ROWS" "$work"
as_postgres "$PG_BIN/pg_ctl" -D "$data" stop -w >/dev/null

# expand SCRIPT COUNT: COUNT statements from a pgbench script, its \set random() drawn (seeded).
expand() {
    python3 - "$1" "$2" <<'PY'
import random, re, sys
script, count = open(sys.argv[1]).read().splitlines(), int(sys.argv[2])
ranges = {m[1]: (int(m[2]), int(m[3])) for line in script
          if (m := re.match(r"\\set (\w+) random\((\d+), (\d+)\)", line))}
statement = " ".join(line for line in script if not line.startswith("\\"))
rng = random.Random(1)
for _ in range(count):
    values = {name: rng.randint(low, high) for name, (low, high) in ranges.items()}
    print(re.sub(r":(\w+)", lambda m: str(values.get(m[1], m[0])), statement))
PY
}

# instructions WORKLOAD DATABASE COUNT -> instructions a single-user backend ran for COUNT writes
instructions() {
    expand "$work/$1.sql" "$3" >"$work/statements.sql"
    as_postgres valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$PG_BIN/postgres" --single -D "$data" "$2" <"$work/statements.sql" 2>&1 >/dev/null \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_write() { # per_write WORKLOAD DATABASE -> instructions per write
    local few many
    few="$(instructions "$1" "$2" "$FEW")"
    many="$(instructions "$1" "$2" "$MANY")"
    echo $(((many - few) / (MANY - FEW)))
}

echo "| workload ($((MANY - FEW)) writes measured) | trigger-less | with the triggers | extra |"
echo "|---|---|---|---|"
plain="$(per_write plain "$TRIGGER_BENCH_DB")"
for workload in floor watched; do
    with="$(per_write "$workload" "$TRIGGER_BENCH_DB")"
    echo "| $workload vs plain | $plain | $with | +$((with - plain)) ($((100 * (with - plain) / plain)) %) |"
done
for workload in risks_owner risks_impact; do
    without="$(per_write "$workload" "${TRIGGER_BENCH_DB}_unwatched")"
    with="$(per_write "$workload" "$TRIGGER_BENCH_DB")"
    echo "| $workload | $without | $with | +$((with - without)) ($((100 * (with - without) / without)) %) |"
done
