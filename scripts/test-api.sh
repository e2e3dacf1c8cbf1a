# shellcheck shell=bash
# Sourced (not run) by scripts that test a running API (verifier/schemathesis.sh,
# openapi/clients.sh). It builds `openrisk-api` (path in $api) and gives:
#
#   start_test_api NAME LOG   a private Redis and the API on free loopback ports, against a fresh
#                             database on the local PostgreSQL, migrated and seeded with a demo
#                             tenant; exports DATABASE_URL, REDIS_URL, API_ADDR and METRICS_ADDR
#                             (the API's /metrics, on a free port too), sets $token (an
#                             admin token) and $test_api_pid; the API logs to LOG
#   stop_test_api_server      stops the API (its log stays complete)
#   stop_test_api             stops the API and Redis and drops the database (call it on EXIT)
#
# The caller runs from the repository root with `set -euo pipefail`.

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet -p openrisk-api
api="$target_dir/debug/openrisk-api"
scripts/ensure-services.sh

test_api_admin_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
test_api_db=""
test_api_pid=""
test_api_redis_pid=""

source scripts/free-port.sh

# stop_test_api_process PID: ends a process started here (nothing when PID is empty) and reaps it.
stop_test_api_process() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

start_test_api() {
    local name=$1 log=$2 redis_port api_port
    redis_port="$(free_port)"
    api_port="$(free_port)"
    test_api_db="openrisk_${name}_$(date +%s)_$$"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --maxmemory-policy volatile-lru >"$log.redis" 2>&1 &
    test_api_redis_pid=$!
    psql -q "$test_api_admin_url" -c "CREATE DATABASE $test_api_db"
    export DATABASE_URL="${test_api_admin_url%/*}/$test_api_db"
    export REDIS_URL="redis://127.0.0.1:$redis_port"
    export API_ADDR="127.0.0.1:$api_port"
    METRICS_ADDR="127.0.0.1:$(free_port)"
    export METRICS_ADDR
    export OPENRISK_CACHE__KEY_PREFIX="$name"
    export OPENRISK_LOG__FILTER="warn"
    "$api" migrate >/dev/null
    # Ports are picked before they are bound: a private Redis that lost its port to another
    # process is seen here, not as a failing test later.
    if ! answers_within_10s our_redis_answers "$redis_port" "$test_api_redis_pid"; then
        echo "the private Redis did not start on port $redis_port:" >&2
        cat "$log.redis" >&2
        return 1
    fi
    "$api" seed --tenants 1 --risks 20 --demo >/dev/null
    # shellcheck disable=SC2034  # read by the sourcing script
    token="$("$api" token create --tenant demo --role admin | tail -n1)"
    "$api" serve >"$log" 2>&1 &
    test_api_pid=$!
    if ! test_api_answers_within_10s; then
        cat "$log" >&2
        return 1
    fi
}

# test_api_answers_within_10s: whether the API started here ($test_api_pid) answers /healthz
# within 10 s of tries. Fails at once if it has exited: its port was picked before it bound it,
# and another server that took the port meanwhile must not be tested in its place.
test_api_answers_within_10s() {
    for _ in $(seq 1 100); do
        if ! kill -0 "$test_api_pid" 2>/dev/null; then
            echo "the API exited before answering on $API_ADDR (was its port taken?):" >&2
            return 1
        fi
        curl -fs "http://$API_ADDR/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the API did not answer on $API_ADDR within 10 s:" >&2
    return 1
}

# our_redis_answers PORT PID: whether the Redis answering on PORT is process PID (not another
# server that took the port first).
our_redis_answers() {
    # grep reads to the end (no -q): an early exit could fail the pipeline under pipefail.
    redis-cli -p "$1" info server 2>/dev/null | tr -d '\r' | grep -x "process_id:$2" >/dev/null
}

# answers_within_10s COMMAND...: whether COMMAND succeeds within 10 s of tries.
answers_within_10s() {
    for _ in $(seq 1 100); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

stop_test_api_server() {
    stop_test_api_process "$test_api_pid"
    test_api_pid=""
}

stop_test_api() {
    stop_test_api_server
    stop_test_api_process "$test_api_redis_pid"
    test_api_redis_pid=""
    if [ -n "$test_api_db" ]; then
        psql -q "$test_api_admin_url" -c "DROP DATABASE IF EXISTS $test_api_db WITH (FORCE)" >/dev/null ||
            echo "could not drop the test database $test_api_db" >&2
    fi
}
