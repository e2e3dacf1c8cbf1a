#!/usr/bin/env bash
# Brings the whole system up locally: services, database, migrations, demo data (a demo tenant
# and a printed token; a second run reuses them and prints a fresh token), then the API and the
# invalidator in release mode (each reused if it already answers). Ctrl-C stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/openrisk}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export API_ADDR="${API_ADDR:-127.0.0.1:8080}"
# The invalidator's and the API's /metrics: one address each.
export METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:9464}"
API_METRICS_ADDR="${API_METRICS_ADDR:-127.0.0.1:9465}"

database="${DATABASE_URL##*/}"
database="${database%%\?*}"
admin_url="${DATABASE_URL%/*}/postgres"
if [ "$(psql "$admin_url" -Atc "SELECT 1 FROM pg_database WHERE datname = '$database'")" != "1" ]; then
    psql "$admin_url" -qc "CREATE DATABASE \"$database\""
fi

cargo build --release --bin openrisk-api --bin openrisk-invalidator
bin="${CARGO_TARGET_DIR:-target}/release"
api="$bin/openrisk-api"
invalidator="$bin/openrisk-invalidator"

"$api" migrate
"$api" seed --tenants 2 --risks 200 --demo

# A component that already answers on its address (an earlier run still up) is reused, not
# started twice; Ctrl-C stops only what this run started.
answers() { curl -fsS -o /dev/null --max-time 2 "http://$1/healthz"; }
started=()
trap '[ ${#started[@]} -eq 0 ] || kill "${started[@]}" 2>/dev/null; wait' INT TERM EXIT
if answers "$METRICS_ADDR"; then
    echo "an invalidator already answers on $METRICS_ADDR: reusing it"
else
    "$invalidator" run &
    started+=($!)
fi
if answers "$API_ADDR"; then
    echo "an API already answers on $API_ADDR: reusing it"
else
    METRICS_ADDR="$API_METRICS_ADDR" "$api" serve &
    started+=($!)
fi
for _ in $(seq 1 150); do
    answers "$API_ADDR" && answers "$METRICS_ADDR" && break
    for pid in "${started[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "a component exited while starting (see above)" >&2; exit 1; }
    done
    sleep 0.2
done
if ! answers "$API_ADDR" || ! answers "$METRICS_ADDR"; then
    echo "the system did not answer within 30 s" >&2
    exit 1
fi
echo "API on http://$API_ADDR (docs: http://$API_ADDR/docs, metrics: http://$API_METRICS_ADDR/metrics), invalidator metrics on http://$METRICS_ADDR/metrics"
if [ ${#started[@]} -eq 0 ]; then
    echo "the system was already running; nothing started"
    exit 0
fi
wait -n "${started[@]}"
