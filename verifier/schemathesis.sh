#!/usr/bin/env bash
# Bad input at scale: schemathesis (pinned, from PyPI, in a venv under ~/.cache) against the
# committed openapi/openapi.json and a running API with a valid admin token, on a free port
# against a fresh database (on the local PostgreSQL) and a private Redis. Fails on any 5xx and on
# any response that violates the spec (status code, content type, headers, body schema).
# Then abusive clients by hand (invented methods, junk tokens, searches and far pages that must
# not reach Redis, score spellings, repeated JSON keys, stale If-Match, 405 Allow).
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

source scripts/test-api.sh
work="$(mktemp -d)"
report_dir="${CARGO_TARGET_DIR:-$PWD/target}/schemathesis"
mkdir -p "$report_dir"
cleanup() {
    stop_test_api
    rm -rf "$work"
}
trap cleanup EXIT

start_test_api schemathesis "$work/api.log"

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

# Abusive clients (issue 19), by hand, against the same API: what schemathesis does not send.
abuse_passed=0
abuse_failed=0
abuse() { # abuse NAME: counts the result of the test command that follows
    local name=$1
    shift
    if "$@"; then
        abuse_passed=$((abuse_passed + 1))
    else
        abuse_failed=$((abuse_failed + 1))
        echo "abusive client check failed: $name" >&2
    fi
}
http_status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
redis_keys() { redis-cli -u "$REDIS_URL" DBSIZE; }
series() { curl -fsS "http://$METRICS_ADDR/metrics" | grep -c '^openrisk_http_requests_total{' || true; }
base="http://$API_ADDR"
auth=(-H "Authorization: Bearer $token")
curl -fsS "${auth[@]}" "$base/api/v1/risks" >/dev/null
series_before=$(series)
for i in $(seq 1 40); do
    curl -s -o /dev/null -X "INVENTED$i" "${auth[@]}" "$base/api/v1/risks"
    curl -s -o /dev/null -X "INVENTED$i" "$base/nowhere/$i"
done
abuse "invented methods add at most 4 metric series" test $(($(series) - series_before)) -le 4
abuse "/metrics is not on the API port" test "$(http_status "$base/metrics")" = 404
junk_ok=true
for junk in junk "ort_$(printf 'G%.0s' $(seq 64))" "Bearer" "$(head -c 300 /dev/zero | tr '\0' x)"; do
    [ "$(http_status -H "Authorization: Bearer $junk" "$base/api/v1/risks")" = 401 ] || junk_ok=false
done
abuse "malformed tokens are 401" "$junk_ok"
keys_before=$(redis_keys)
for i in $(seq 1 50); do
    curl -fsS -o /dev/null "${auth[@]}" "$base/api/v1/risks?q=abuse$i"
    curl -fsS -o /dev/null "${auth[@]}" "$base/api/v1/risks?page=$((1000 + i))"
    curl -s -o /dev/null "${auth[@]}" "$base/api/v1/risks/$(python3 -c 'import uuid; print(uuid.uuid4())')"
done
abuse "searches, far pages and unknown ids write no Redis key" test "$(redis_keys)" = "$keys_before"
for bound in 0 -0 0.0 0.000 0e0; do curl -fsS -o /dev/null "${auth[@]}" "$base/api/v1/risks?min_score=$bound"; done
abuse "five spellings of one score bound store one entry" test "$(redis_keys)" -eq $((keys_before + 1))
duplicate='{"name":"x","role":"viewer","role":"admin"}'
abuse "a repeated JSON key is 400" test "$(http_status -X POST "${auth[@]}" -H 'Content-Type: application/json' \
    -d "$duplicate" "$base/api/v1/tokens")" = 400
abuse "a stale If-Match is 412" test "$(http_status -X PATCH "${auth[@]}" -H 'If-Match: "stale"' \
    -H 'Content-Type: application/json' -d '{"impact":2}' \
    "$base/api/v1/risks/$(curl -fsS "${auth[@]}" "$base/api/v1/risks?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')")" = 412
allow=$(curl -s -o /dev/null -D - -X PUT "${auth[@]}" "$base/api/v1/risks" | tr -d '\r' | sed -n 's/^[Aa]llow: //p')
abuse "405 names the allowed methods" test "$allow" = "GET, HEAD, POST"
echo "abusive clients: $abuse_passed passed, $abuse_failed failed"
if [ "$abuse_failed" -ne 0 ]; then
    status=1
fi

stop_test_api_server
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
passed=$((passed + abuse_passed))
failed=$((failed + abuse_failed))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1
fi
echo "$passed passed, $failed failed"
exit "$status"
