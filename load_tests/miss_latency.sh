#!/usr/bin/env bash
# A risk detail's (or the risk list's) cache miss as a reader meets it right after a write, timed
# one request at a time on an otherwise idle system, for API binaries side by side. Each miss
# follows a SQL update of the risk's title and a pause for the invalidator; the binaries share the
# database, Redis and invalidator of the running demo (`scripts/dev-up.sh`) and take turns miss by
# miss, so drift in the machine's load reaches each alike. Prints p25 / p50 / p90 per binary in ms
# (curl's `time_total`), and checks that every answer was a miss that carried the new title.
#
#   load_tests/miss_latency.sh before=/tmp/api-old after=target/release/openrisk-api
#
# Knobs (environment): READ (`detail`, the default, or `list`: the tenant's first page by
# last change, which the updated risk heads) MISSES (per binary and round, default 30) ROUNDS
# (default 2) PAUSE_MS (after each update, default 200) DATABASE_URL REDIS_URL (the demo's by
# default).
set -euo pipefail
cd "$(dirname "$0")/.."

MISSES=${MISSES:-30}
ROUNDS=${ROUNDS:-2}
PAUSE_MS=${PAUSE_MS:-200}
READ=${READ:-detail}
case "$READ" in
    detail | list) ;;
    *) echo "READ is detail or list, not $READ" >&2; exit 2 ;;
esac
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/openrisk}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
[ $# -ge 1 ] || { echo "usage: $0 label=api-binary..." >&2; exit 2; }

out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"' EXIT

labels=() ports=()
port=18180
for variant in "$@"; do
    label=${variant%%=*} binary=${variant#*=}
    port=$((port + 2))
    API_ADDR="127.0.0.1:$port" METRICS_ADDR="127.0.0.1:$((port + 1))" OPENRISK_LOG__FILTER=warn \
        "$binary" serve >"$out/$label.log" 2>&1 &
    pids+=($!)
    labels+=("$label") ports+=("$port")
done
healthy() { curl -fs "http://127.0.0.1:$1/healthz" >/dev/null; }
for index in "${!ports[@]}"; do
    label=${labels[$index]} port=${ports[$index]}
    for _ in $(seq 100); do
        healthy "$port" && break
        sleep 0.1
    done
    if ! healthy "$port"; then
        echo "$label never answered /healthz on :$port in 10 s; its log:" >&2
        tail -5 "$out/$label.log" >&2
        exit 1
    fi
    : >"$out/$label.times"
done

token=$("${1#*=}" token create --tenant demo --role analyst --name miss-latency 2>/dev/null)
mapfile -t risks < <(psql "$DATABASE_URL" -Atc \
    "SELECT r.id FROM risks r JOIN tenants t ON t.id = r.tenant_id
     WHERE t.slug = 'demo' AND r.deleted_at IS NULL ORDER BY r.id LIMIT $MISSES")
[ "${#risks[@]}" -eq "$MISSES" ] || { echo "the demo tenant has fewer than $MISSES risks" >&2; exit 1; }

# The path read after each update of `$1`: its detail, or the page of the list it now heads.
path_of() {
    if [ "$READ" = detail ]; then
        echo "/api/v1/risks/$1"
    else
        echo "/api/v1/risks?sort_by=updated_at&sort_dir=desc&limit=20"
    fi
}

pause=$(printf '0.%03d' "$PAUSE_MS")
[ "$PAUSE_MS" -lt 1000 ] || pause=$((PAUSE_MS / 1000))
failed=0
for round in $(seq "$ROUNDS"); do
    for risk in "${risks[@]}"; do
        for index in "${!labels[@]}"; do
            label=${labels[$index]} port=${ports[$index]}
            title="miss $label $round $(date +%s%N)"
            psql "$DATABASE_URL" -qc "UPDATE risks SET title = '$title', updated_at = now() WHERE id = '$risk'"
            sleep "$pause"
            read -r status seconds cache < <(curl -s -o "$out/body" \
                -w '%{http_code} %{time_total} %header{cache-status}\n' \
                -H "Authorization: Bearer $token" "http://127.0.0.1:$port$(path_of "$risk")")
            # Only fresh misses are timed: an error or a stale hit would time something else.
            if [ "$status" != 200 ] || ! grep -q "\"$title\"" "$out/body" || [[ "$cache" != *fwd=miss* ]]; then
                echo "FAIL $label $risk: status $status, cache status ${cache:-none}" >&2
                failed=$((failed + 1))
            else
                echo "$seconds" >>"$out/$label.times"
            fi
        done
    done
done

echo "| API | misses | p25 | p50 | p90 (ms) |"
echo "|---|---|---|---|---|"
for label in "${labels[@]}"; do
    sort -g "$out/$label.times" | awk -v label="$label" '
        { t[NR] = $1 * 1000 }
        END {
            printf "| %s | %d | %.2f | %.2f | %.2f |\n", label, NR, t[int(NR * 0.25) + 1], t[int(NR * 0.5) + 1], t[int(NR * 0.9) + 1]
        }'
done
[ "$failed" -eq 0 ] || { echo "$failed answers were not fresh misses" >&2; exit 1; }
