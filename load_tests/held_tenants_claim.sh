#!/usr/bin/env bash
# What one claim costs Postgres while a replica holds N tenants back (a Redis master down, its
# tenants' events moved aside): the CLAIM of shared/src/outbox.rs as the invalidator runs it
# (prepared, generic plan, no sequential scans, no JIT), under EXPLAIN ANALYZE in a scratch
# database of the local Postgres, with two events aside per held tenant and 500 more of theirs
# unclaimed, the held list being every one of them. With BASE=<revision>, that revision's CLAIM
# runs after it on the same rows. Prints the median execution time of ROUNDS.
#
#   load_tests/held_tenants_claim.sh                     # N = 100 1000 5000, 5 rounds
#   HELD="1000 5000" BASE=HEAD~1 load_tests/held_tenants_claim.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HELD=${HELD:-100 1000 5000}
ROUNDS=${ROUNDS:-5}
BASE=${BASE:-}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
db=openrisk_held_claim_$$
target=${CARGO_TARGET_DIR:-target}

# The CLAIM constant of an outbox.rs, its column macros expanded, as one SQL text.
claim_sql() {
    python3 - "$1" <<'EOF'
import re, sys
source = open(sys.argv[1]).read()
macros = {}
for name in ("outbox_row_columns", "held_row_columns", "batch_columns"):
    found = re.search(r'macro_rules! %s \{\s*\(\) => \{\s*"((?:[^"\\]|\\.)*)"\s*\};' % name, source, re.S)
    macros[name] = found.group(1)
claim = re.search(r"pub const CLAIM: &str = concat!\((.*?)\n\);", source, re.S).group(1)
parts = re.findall(r'"((?:[^"\\]|\\.)*)"|(\w+)!\(\)', claim, re.S)
print("".join(macros[name] if name else text for text, name in parts))
EOF
}

cargo build --quiet --locked -p openrisk-api
psql "$PGURL/postgres" -qc "CREATE DATABASE $db"
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
DATABASE_URL="$PGURL/$db" REDIS_URL=redis://127.0.0.1:6379 "$target/debug/openrisk-api" migrate >"$target/held_claim_migrate.log" 2>&1 ||
    { cat "$target/held_claim_migrate.log" >&2; exit 1; }

claims=("this:$(claim_sql shared/src/outbox.rs)")
if [ -n "$BASE" ]; then
    base_source=$(mktemp)
    git show "$BASE:shared/src/outbox.rs" >"$base_source"
    claims+=("$BASE:$(claim_sql "$base_source")")
    rm -f "$base_source"
fi

printf '%-8s %-12s %s\n' "held" "claim" "median ms ($ROUNDS rounds)"
for held in $HELD; do
    psql "$PGURL/$db" -q <<EOF
TRUNCATE cache_outbox_held, cache_outbox;
INSERT INTO cache_outbox_held (id, tenant_id, table_name, op, tags, txid, created_at)
SELECT 1000000000 + row_number() OVER (), t.id, 'risks', 'UPDATE', ARRAY['risks'], pg_current_xact_id(), now()
FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $held)) t, generate_series(1, 2);
INSERT INTO cache_outbox (tenant_id, table_name, op, tags, txid, created_at)
SELECT tenant_id, 'risks', 'UPDATE', ARRAY['risks'], pg_current_xact_id(), now() FROM cache_outbox_held LIMIT 500;
ANALYZE cache_outbox_held; ANALYZE cache_outbox;
EOF
    for entry in "${claims[@]}"; do
        name=${entry%%:*}
        sql=${entry#*:}
        times=$(
            {
                echo "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off;"
                echo "PREPARE claim(bigint, uuid[]) AS $sql;"
                echo "SELECT array_agg(DISTINCT tenant_id)::text AS held FROM cache_outbox_held \\gset"
                for _ in $(seq "$ROUNDS"); do
                    echo "BEGIN; EXPLAIN (ANALYZE, TIMING OFF) EXECUTE claim(500, :'held'); ROLLBACK;"
                done
            } | psql "$PGURL/$db" -qAt | sed -n 's/^Execution Time: \([0-9.]*\) ms$/\1/p'
        )
        median=$(echo "$times" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
        printf '%-8s %-12s %s\n' "$held" "$name" "$median"
    done
done
