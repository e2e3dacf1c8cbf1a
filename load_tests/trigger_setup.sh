# shellcheck shell=bash
# Sourced by trigger_cost.sh and trigger_instructions.sh: the tables and write scripts both compare.
#
# trigger_setup ADMIN_URL DB ROWS WORKDIR
#   creates database DB (migrated, with bench_plain / bench_floor / bench_watched and ROWS risks of
#   one tenant) and DB_unwatched (the same, with risks and risk_history unwatched), and writes one
#   pgbench script per workload to WORKDIR/<workload>.sql:
#     plain, floor, watched     single-row UPDATE of a 3-column table without a trigger, with a bare
#                               plpgsql outbox INSERT ("floor"), and under cache_watch
#     risks_owner, risks_impact single-row UPDATE of a risk as the API's PATCH makes it (owner: one
#                               outbox row; impact: re-scored, a history row, two outbox rows)
# Expects the release openrisk-api in ${CARGO_TARGET_DIR:-target}/release (for `migrate`).
# Sourcing it also sets strict mode and makes the repository root the working directory, for both.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck disable=SC2034 # read by the scripts that source this file
TRIGGER_BENCH_DB="openrisk_bench_triggers"
TRIGGER_BENCH_TENANT="00000000-0000-0000-0000-000000000001"
# Rows of each benchmark table (the environment may say otherwise).
ROWS="${ROWS:-10000}"

# trigger_drop ADMIN_URL DB: drops DB and DB_unwatched where they exist.
trigger_drop() {
    PGOPTIONS="-c client_min_messages=warning" psql "$1" -qc "DROP DATABASE IF EXISTS $2 WITH (FORCE)" \
        -c "DROP DATABASE IF EXISTS ${2}_unwatched WITH (FORCE)"
}

trigger_setup() {
    local admin_url="$1" db="$2" rows="$3" work="$4"
    local db_url="${admin_url%/*}/$db" tenant="$TRIGGER_BENCH_TENANT"
    trigger_drop "$admin_url" "$db"
    psql "$admin_url" -qc "CREATE DATABASE $db"
    DATABASE_URL="$db_url" "${CARGO_TARGET_DIR:-target}"/release/openrisk-api migrate >/dev/null
    PGOPTIONS="-c client_min_messages=warning" psql "$db_url" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO tenants (id, slug, name) VALUES ('$tenant', 'bench', 'bench');
CREATE TABLE bench_plain (id int PRIMARY KEY, tenant_id uuid NOT NULL, value bigint NOT NULL);
INSERT INTO bench_plain SELECT g, '$tenant', 0 FROM generate_series(1, $rows) g;
CREATE TABLE bench_watched (LIKE bench_plain INCLUDING ALL);
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
-- Risk n has the id md5(n), so a write script can name one without a lookup.
INSERT INTO risks (id, tenant_id, title, description, impact, probability, status, owner, tags)
SELECT md5(g::text)::uuid, '$tenant', 'Risk ' || g, 'What could go wrong, case ' || g,
       1 + g % 5, 1 + g / 5 % 5, 'ACTIVE', 'owner-' || g % 50, ARRAY['tag-' || g % 7]
FROM generate_series(1, $rows) g;
TRUNCATE cache_outbox;
VACUUM ANALYZE;
SQL
    psql "$admin_url" -qc "CREATE DATABASE ${db}_unwatched TEMPLATE $db"
    psql "${admin_url%/*}/${db}_unwatched" -q -v ON_ERROR_STOP=1 \
        -c "SELECT cache_unwatch('risks'), cache_unwatch('risk_history')" >/dev/null

    local table change
    for table in plain floor watched; do
        printf '\\set id random(1, %s)\nUPDATE bench_%s SET value = value + 1 WHERE id = :id;\n' "$rows" "$table" \
            >"$work/$table.sql"
    done
    for change in "owner = 'owner-' || :n" "impact = :n % 5 + 1"; do
        printf '\\set id random(1, %s)\n\\set n random(1, 50)\nUPDATE risks SET %s, updated_at = now() WHERE tenant_id = '"'%s'"' AND id = md5(:id::text)::uuid;\n' \
            "$rows" "$change" "$tenant" >"$work/risks_${change%% *}.sql"
    done
}
