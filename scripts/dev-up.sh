#!/usr/bin/env bash
# Brings the whole system up locally: services, database, migrations, demo data (a demo tenant
# and a printed token; a second run reuses them and prints a fresh token), then the API and the
# invalidator in release mode. Ctrl-C stops both.
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

"$invalidator" run &
invalidator_pid=$!
METRICS_ADDR="$API_METRICS_ADDR" "$api" serve &
api_pid=$!
trap 'kill $api_pid $invalidator_pid 2>/dev/null; wait' INT TERM EXIT
echo "API on http://$API_ADDR (docs: http://$API_ADDR/docs, metrics: http://$API_METRICS_ADDR/metrics), invalidator metrics on http://$METRICS_ADDR/metrics"
wait -n "$api_pid" "$invalidator_pid"
