#!/usr/bin/env bash
# Bad input at scale: schemathesis (pinned, from PyPI, in a venv under ~/.cache) against the
# committed openapi/openapi.json and a running API with a valid admin token, on a free port
# against a fresh database (on the local PostgreSQL) and a private Redis. Fails on any 5xx and on
# any response that violates the spec (status code, content type, headers, body schema).
# Bounded to about two minutes. The last line is "N passed, M failed" (one per operation and check).
# Extra arguments go to `schemathesis run` (e.g. --max-examples 200 --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
venv="$HOME/.cache/openrisk-schemathesis/venv-$SCHEMATHESIS_VERSION"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet -p openrisk-api
api="$target_dir/debug/openrisk-api"
scripts/ensure-services.sh

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
admin_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="openrisk_schemathesis_$(date +%s)_$$"
work="$(mktemp -d)"
report_dir="${CARGO_TARGET_DIR:-$PWD/target}/schemathesis"
mkdir -p "$report_dir"
redis_port="$(free_port)"
api_port="$(free_port)"
redis_pid=""
api_pid=""
cleanup() {
    [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --maxmemory-policy volatile-lru >"$work/redis.log" 2>&1 &
redis_pid=$!
psql -q "$admin_url" -c "CREATE DATABASE $db"
export DATABASE_URL="${admin_url%/*}/$db"
export REDIS_URL="redis://127.0.0.1:$redis_port"
export API_ADDR="127.0.0.1:$api_port"
export OPENRISK_CACHE__KEY_PREFIX="schemathesis"
export OPENRISK_LOG__FILTER="warn"
"$api" migrate >/dev/null
"$api" seed --tenants 1 --risks 20 --demo >/dev/null
token="$("$api" token create --tenant demo --role admin 2>/dev/null | tail -n1)"
"$api" serve >"$work/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do
    curl -fs "http://$API_ADDR/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

spec="$PWD/openapi/openapi.json"
if [ ! -f "$spec" ]; then
    echo "warning: $spec is not committed; testing the spec the binary generates" >&2
    spec="$work/openapi.json"
    "$api" openapi >"$spec"
fi

rm -f "$report_dir/junit.xml"
set +e
# Run from the scratch directory: schemathesis keeps a .schemathesis/ cache in its working directory.
# One worker: with several, hypothesis' lambda introspection can hit CPython 3.11's "AST constructor
# recursion depth mismatch" (ast.parse is not thread-safe there) and report a runtime error.
(cd "$work" && timeout 150 "$venv/bin/schemathesis" run "$spec" \
    --url "http://$API_ADDR" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples 40 --max-time 100 --workers 1 --seed 1 --no-color \
    --report junit --report-junit-path "$report_dir/junit.xml" \
    "$@") >"$report_dir/schemathesis.log" 2>&1
status=$?
set -e
kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
api_pid=""
cp "$work/api.log" "$report_dir/api.log" 2>/dev/null || true
grep -v '^\s*$' "$report_dir/schemathesis.log" | tail -n 60
echo "full report: $report_dir/schemathesis.log (API log: $report_dir/api.log)"

if grep -q "panicked" "$report_dir/api.log"; then
    echo "the API panicked:" >&2
    grep -B2 -A10 "panicked" "$report_dir/api.log" | head -40 >&2
    status=1
fi
passed=0
failed=0
if [ -f "$report_dir/junit.xml" ]; then
    tests=$(grep -o '<testsuite [^>]*' "$report_dir/junit.xml" | grep -o 'tests="[0-9]*"' | head -n1 | tr -dc '0-9')
    failures=$(grep -o '<testsuite [^>]*' "$report_dir/junit.xml" | grep -o 'failures="[0-9]*"' | head -n1 | tr -dc '0-9')
    errors=$(grep -o '<testsuite [^>]*' "$report_dir/junit.xml" | grep -o 'errors="[0-9]*"' | head -n1 | tr -dc '0-9')
    failed=$(( ${failures:-0} + ${errors:-0} ))
    passed=$(( ${tests:-0} - failed ))
fi
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1
fi
echo "$passed passed, $failed failed"
exit "$status"
