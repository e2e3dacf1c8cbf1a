#!/usr/bin/env bash
# What migration 0019's stamp_updated_at trigger costs a write: an UPDATE of every one of ROWS
# risks (each with a description, custom fields and tags), under EXPLAIN ANALYZE in a scratch
# database of the local Postgres, every other trigger of the table firing as in production
# (score, history, cache capture). Each round runs three variants side by side, each in a
# rolled-back transaction: the trigger as shipped (rows compared as records), none, and the
# first version of the trigger, which compared the rows as `jsonb`. Prints the medians of ROUNDS.
#
#   load_tests/updated_at_stamp_cost.sh               # 10,000 rows, 7 rounds
#   ROWS=50000 ROUNDS=5 load_tests/updated_at_stamp_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-10000}
ROUNDS=${ROUNDS:-7}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
db=openrisk_stamp_cost_$$
target=${CARGO_TARGET_DIR:-target}

cargo build --quiet --locked -p openrisk-api
psql "$PGURL/postgres" -qc "CREATE DATABASE $db"
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
DATABASE_URL="$PGURL/$db" REDIS_URL=redis://127.0.0.1:6379 "$target/debug/openrisk-api" migrate >"$target/stamp_cost_migrate.log" 2>&1 ||
    { cat "$target/stamp_cost_migrate.log" >&2; exit 1; }
psql "$PGURL/$db" -q <<EOF
INSERT INTO tenants (id, slug, name) VALUES ('00000000-0000-0000-0000-000000000001', 'bench', 'Bench');
INSERT INTO risks (id, tenant_id, title, description, impact, probability, custom_fields, tags)
SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'risk ' || i, repeat('words ', 40), 3, 4,
       '{"owner_team": "infra", "review": 3, "weights": [1.5, 2]}', ARRAY['cloud', 'vendor']
FROM generate_series(1, $ROWS) i;
VACUUM ANALYZE risks;
EOF

# The first version of the trigger: rows compared as jsonb, less the generated column.
JSONB_VARIANT="
CREATE FUNCTION stamp_as_jsonb() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF to_jsonb(NEW) - '{severity,updated_at}'::text[] IS DISTINCT FROM to_jsonb(OLD) - '{severity,updated_at}'::text[] THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END \$\$;
CREATE TRIGGER stamp_updated_at_jsonb BEFORE UPDATE ON risks FOR EACH ROW EXECUTE FUNCTION stamp_as_jsonb();"

# One round of a variant (shipped, none, jsonb): the statement's execution time and the stamping
# trigger's, in ms.
round() {
    local variant=$1
    {
        echo "BEGIN;"
        if [ "$variant" != shipped ]; then echo "ALTER TABLE risks DISABLE TRIGGER stamp_updated_at;"; fi
        if [ "$variant" = jsonb ]; then echo "$JSONB_VARIANT"; fi
        echo "EXPLAIN (ANALYZE, COSTS OFF) UPDATE risks SET title = title || '.';"
        echo "ROLLBACK;"
    } | psql "$PGURL/$db" -qAt | awk '
        /^Execution Time:/ { total = $3 }
        /^Trigger stamp_updated_at/ { sub(/.*time=/, ""); sub(/ .*/, ""); stamp = $0 }
        END { printf "%s %s\n", total, (stamp == "" ? 0 : stamp) }'
}

# The median of a space-separated list of numbers.
median() {
    local -a values
    read -r -a values <<<"$1"
    printf '%s\n' "${values[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
declare -A totals triggers
for _ in $(seq "$ROUNDS"); do
    for variant in shipped none jsonb; do
        read -r total trigger < <(round "$variant")
        totals[$variant]+="$total "
        triggers[$variant]+="$trigger "
    done
done
echo "rows $ROWS, rounds $ROUNDS (medians)"
printf '%-8s %14s %16s %12s %18s\n' variant "UPDATE ms" "trigger ms" "trigger us/row" "UPDATE / none"
none=$(median "${totals[none]}")
for variant in shipped none jsonb; do
    total=$(median "${totals[$variant]}") trigger=$(median "${triggers[$variant]}")
    awk -v v="$variant" -v t="$total" -v g="$trigger" -v n="$ROWS" -v o="$none" \
        'BEGIN { printf "%-8s %14.1f %16.1f %12.2f %18.3f\n", v, t, g, g * 1000 / n, t / o }'
done
