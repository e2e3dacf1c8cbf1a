#!/usr/bin/env bash
# What the cache triggers cost a writer: pgbench single-row UPDATEs against identical tables with
# and without cache_watch, side by side in one run, alternating so machine noise hits both.
#
#   load_tests/trigger_cost.sh                  # 16 clients, 3 rounds of 15 s per variant
#   CLIENTS=4 SECONDS_PER_RUN=10 ROUNDS=5 load_tests/trigger_cost.sh
#
# Variants on a minimal 3-column table (the worst case: the write itself costs least):
#   plain            no trigger
#   floor            a hand-written plpgsql trigger doing nothing but one INSERT of (tenant, tags)
#                    into a two-column table: what any row trigger writing an outbox costs here
#   watched          cache_watch trigger, outbox insert, nobody parked (no NOTIFY), outbox undrained
#   watched+drained  as watched, while an invalidator replica drains the outbox (--mode poll)
#   watched+listen   as watched, drained by a replica in the default listen mode (parks when idle)
#   watched+parked   the park lock held all the time: every transaction NOTIFYs (the cost we avoid)
# and on OpenRisk's own write path, a risk updated as the API's PATCH does it (all of the table's
# indexes and its score and history triggers), watched and in an identical database where
# `risks` and `risk_history` are unwatched (see trigger_setup.sh).
# Prints Markdown tables of TPS and % of the trigger-less run. Needs the workspace built in release
# mode for the drained variants (it builds it).
# shellcheck source=load_tests/trigger_setup.sh
source "$(dirname "$0")/trigger_setup.sh"

CLIENTS="${CLIENTS:-16}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-15}"
ROUNDS="${ROUNDS:-3}"
ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB_URL="${ADMIN_URL%/*}/$TRIGGER_BENCH_DB"
UNWATCHED_URL="${DB_URL}_unwatched"
work="$(mktemp -d)"
bin="${CARGO_TARGET_DIR:-target}/release"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

scripts/ensure-services.sh
cargo build --release --quiet --bin openrisk-api --bin openrisk-invalidator
trigger_setup "$ADMIN_URL" "$TRIGGER_BENCH_DB" "$ROWS" "$work"

run() { # run SCRIPT [DATABASE_URL] -> prints TPS
    pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$work/$1.sql" "${2:-$DB_URL}" 2>/dev/null \
        | awk '/^tps/ {print $3; exit}'
}

risk_workloads=(risks_owner risks_impact)
declare -A total
for variant in plain floor watched watched+drained watched+listen watched+parked; do total[$variant]=0; done
for workload in "${risk_workloads[@]}"; do total[$workload]=0; total[$workload+unwatched]=0; done
add() { total[$1]=$(echo "${total[$1]} + $2" | bc); }
for round in $(seq 1 "$ROUNDS"); do
    add plain "$(run plain)"
    add floor "$(run floor)"
    psql "$DB_URL" -qc "TRUNCATE bench_floor_outbox, cache_outbox"
    add watched "$(run watched)"
    psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    for mode in poll listen; do
        variant="watched+drained"
        [ "$mode" = listen ] && variant="watched+listen"
        DATABASE_URL="$DB_URL" OPENRISK_CACHE__KEY_PREFIX=bench METRICS_ADDR=127.0.0.1:0 OPENRISK_LOG__FILTER=warn \
            "$bin"/openrisk-invalidator run --mode "$mode" &
        invalidator=$!
        sleep 1
        add "$variant" "$(run watched)"
        kill "$invalidator"; wait "$invalidator" 2>/dev/null || true
        psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    done
    # Hold the park lock from a separate session for the whole run.
    (echo "SELECT pg_advisory_lock(cache_park_lock_key());"; sleep $((SECONDS_PER_RUN + 3))) | psql -q "$DB_URL" >/dev/null &
    holder=$!
    sleep 1
    add watched+parked "$(run watched)"
    wait "$holder" 2>/dev/null || true
    psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    for workload in "${risk_workloads[@]}"; do
        add "$workload+unwatched" "$(run "$workload" "$UNWATCHED_URL")"
        add "$workload" "$(run "$workload")"
        psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    done
    echo "round $round done" >&2
done

echo "| variant ($CLIENTS clients, ${ROUNDS} × ${SECONDS_PER_RUN} s) | TPS | % of plain |"
echo "|---|---|---|"
for variant in plain floor watched watched+drained watched+listen watched+parked; do
    tps=$(echo "scale=0; ${total[$variant]} / $ROUNDS" | bc)
    pct=$(echo "scale=1; 100 * ${total[$variant]} / ${total[plain]}" | bc)
    echo "| $variant | $tps | $pct % |"
done
echo
echo "| OpenRisk write ($CLIENTS clients, ${ROUNDS} × ${SECONDS_PER_RUN} s) | TPS unwatched | TPS watched | % of unwatched |"
echo "|---|---|---|---|"
for workload in "${risk_workloads[@]}"; do
    unwatched=$(echo "scale=0; ${total[$workload+unwatched]} / $ROUNDS" | bc)
    watched=$(echo "scale=0; ${total[$workload]} / $ROUNDS" | bc)
    pct=$(echo "scale=1; 100 * ${total[$workload]} / ${total[$workload+unwatched]}" | bc)
    echo "| $workload | $unwatched | $watched | $pct % |"
done
trigger_drop "$ADMIN_URL" "$TRIGGER_BENCH_DB"
