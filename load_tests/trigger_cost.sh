#!/usr/bin/env bash
# What the cache triggers cost a writer: pgbench single-row UPDATEs against an identical table
# with and without cache_watch, side by side in one run, alternating so machine noise hits both.
#
#   load_tests/trigger_cost.sh                  # 16 clients, 3 rounds of 15 s per variant
#   CLIENTS=4 SECONDS_PER_RUN=10 ROUNDS=5 load_tests/trigger_cost.sh
#
# Variants:
#   plain            no trigger
#   floor            a hand-written plpgsql trigger doing nothing but one INSERT of (tenant, tags)
#                    into a two-column table: what any row trigger writing an outbox costs here
#   watched          cache_watch trigger, outbox insert, nobody parked (no NOTIFY), outbox undrained
#   watched+drained  as watched, while an invalidator replica drains the outbox (--mode poll)
#   watched+listen   as watched, drained by a replica in the default listen mode (parks when idle)
#   watched+parked   the park lock held all the time: every transaction NOTIFYs (the cost we avoid)
# Prints a Markdown table of TPS and % of plain. Needs the workspace built in release mode for
# the drained variant (it builds it).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS="${CLIENTS:-16}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-15}"
ROUNDS="${ROUNDS:-3}"
ROWS="${ROWS:-10000}"
ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB="openrisk_bench_triggers"
DB_URL="${ADMIN_URL%/*}/$DB"
work="$(mktemp -d)"
bin="${CARGO_TARGET_DIR:-target}/release"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

scripts/ensure-services.sh
cargo build --release --quiet --bin openrisk-api --bin openrisk-invalidator
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
DATABASE_URL="$DB_URL" "$bin"/openrisk-api migrate >/dev/null
psql "$DB_URL" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO tenants (id, slug, name) VALUES ('00000000-0000-0000-0000-000000000001', 'bench', 'bench');
CREATE TABLE bench_plain (id int PRIMARY KEY, tenant_id uuid NOT NULL, value bigint NOT NULL);
CREATE TABLE bench_watched (id int PRIMARY KEY, tenant_id uuid NOT NULL, value bigint NOT NULL);
INSERT INTO bench_plain SELECT g, '00000000-0000-0000-0000-000000000001', 0 FROM generate_series(1, $ROWS) g;
INSERT INTO bench_watched SELECT * FROM bench_plain;
CREATE TABLE bench_floor (LIKE bench_plain INCLUDING ALL);
INSERT INTO bench_floor SELECT * FROM bench_plain;
CREATE TABLE bench_floor_outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id uuid NOT NULL, tags text[] NOT NULL);
CREATE FUNCTION bench_floor_capture() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO bench_floor_outbox (tenant_id, tags) VALUES (NEW.tenant_id, ARRAY['bench:' || NEW.id, 'bench']);
    RETURN NULL;
END
\$\$;
CREATE TRIGGER bench_floor_capture AFTER UPDATE ON bench_floor FOR EACH ROW EXECUTE FUNCTION bench_floor_capture();
SELECT cache_watch('bench_watched', 'r.tenant_id', \$\$ARRAY['bench:' || r.id, 'bench']\$\$);
VACUUM ANALYZE;
SQL
for table in plain floor watched; do
    cat >"$work/$table.sql" <<SQL
\set id random(1, $ROWS)
UPDATE bench_$table SET value = value + 1 WHERE id = :id;
SQL
done

run() { # run NAME TABLE -> prints TPS
    pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$work/$2.sql" "$DB_URL" 2>/dev/null \
        | awk '/^tps/ {print $3; exit}'
}

declare -A total
for variant in plain floor watched watched+drained watched+listen watched+parked; do total[$variant]=0; done
for round in $(seq 1 "$ROUNDS"); do
    total[plain]=$(echo "${total[plain]} + $(run plain plain)" | bc)
    total[floor]=$(echo "${total[floor]} + $(run floor floor)" | bc)
    psql "$DB_URL" -qc "TRUNCATE bench_floor_outbox, cache_outbox"
    total[watched]=$(echo "${total[watched]} + $(run watched watched)" | bc)
    psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    for mode in poll listen; do
        variant=watched+drained
        [ "$mode" = listen ] && variant=watched+listen
        DATABASE_URL="$DB_URL" OPENRISK_CACHE__KEY_PREFIX=bench METRICS_ADDR=127.0.0.1:0 OPENRISK_LOG__FILTER=warn \
            "$bin"/openrisk-invalidator run --mode "$mode" &
        invalidator=$!
        sleep 1
        total[$variant]=$(echo "${total[$variant]} + $(run watched watched)" | bc)
        kill "$invalidator"; wait "$invalidator" 2>/dev/null || true
        psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    done
    # Hold the park lock from a separate session for the whole run.
    (echo "SELECT pg_advisory_lock(cache_park_lock_key());"; sleep $((SECONDS_PER_RUN + 3))) | psql -q "$DB_URL" >/dev/null &
    holder=$!
    sleep 1
    total[watched+parked]=$(echo "${total[watched+parked]} + $(run watched watched)" | bc)
    wait "$holder" 2>/dev/null || true
    psql "$DB_URL" -qc "TRUNCATE cache_outbox"
    echo "round $round done" >&2
done

echo "| variant ($CLIENTS clients, ${ROUNDS} × ${SECONDS_PER_RUN} s) | TPS | % of plain |"
echo "|---|---|---|"
for variant in plain floor watched watched+drained watched+listen watched+parked; do
    tps=$(echo "scale=0; ${total[$variant]} / $ROUNDS" | bc)
    pct=$(echo "scale=1; 100 * ${total[$variant]} / ${total[plain]}" | bc)
    echo "| $variant | $tps | $pct % |"
done
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
