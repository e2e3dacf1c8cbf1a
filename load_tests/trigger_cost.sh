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
# shellcheck source=scripts/free-port.sh
source scripts/free-port.sh

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

# Waits up to 10 s for the condition "$2"… to hold; the run fails otherwise, $1 naming what was
# awaited: a variant is measured only in the state its label names.
await() {
    local what=$1 deadline=$((SECONDS + 10))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$what: not so after 10 s" >&2
            exit 1
        fi
        sleep 0.1
    done
}
# Whether the invalidator whose metrics are on port $1 reports gauge $2 at $3 (false while it
# does not answer).
gauge_is() {
    curl -fs "http://127.0.0.1:$1/metrics" | awk -v name="$2" -v want="$3" '$1 == name && $2 == want { found = 1 } END { exit !found }'
}
outbox_empty() { [ "$(psql "$DB_URL" -Atc "SELECT count(*) FROM cache_outbox")" = 0 ]; }
# Whether another session holds the park lock (this one's try releases it on disconnect).
park_lock_held() { [ "$(psql "$DB_URL" -Atc "SELECT pg_try_advisory_lock(cache_park_lock_key())")" = f ]; }

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
        metrics_port=$(free_port)
        DATABASE_URL="$DB_URL" OPENRISK_CACHE__KEY_PREFIX=bench METRICS_ADDR="127.0.0.1:$metrics_port" OPENRISK_LOG__FILTER=warn \
            "$bin"/openrisk-invalidator run --mode "$mode" &
        invalidator=$!
        # Measured once it runs in its mode (listening for wake-ups or not) and drains this
        # database: one write's event leaves the outbox; in listen mode, once it parks again.
        listening=0
        [ "$mode" = listen ] && listening=1
        await "$variant: the invalidator runs (listener connected: $listening)" \
            gauge_is "$metrics_port" openrisk_invalidator_listener_connected "$listening"
        psql "$DB_URL" -qc "UPDATE bench_watched SET value = value + 1 WHERE id = 1"
        await "$variant: the invalidator drained the outbox" outbox_empty
        if [ "$mode" = listen ]; then
            await "$variant: the invalidator parked" gauge_is "$metrics_port" openrisk_invalidator_parked 1
        fi
        add "$variant" "$(run watched)"
        kill "$invalidator"; wait "$invalidator" 2>/dev/null || true
        psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    done
    # Hold the park lock from a separate session for the whole run.
    (echo "SELECT pg_advisory_lock(cache_park_lock_key());"; sleep $((SECONDS_PER_RUN + 3))) | psql -q "$DB_URL" >/dev/null &
    holder=$!
    await "watched+parked: the park lock is held" park_lock_held
    add watched+parked "$(run watched)"
    park_lock_held || { echo "watched+parked: the park lock was released before the run ended" >&2; exit 1; }
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
