#!/usr/bin/env bash
# Smoke run of the HTTP benchmark at tiny scale (1 tenant × 50 risks, 1 s phases, debug build),
# so that bench.sh and openrisk-bench cannot rot. About 50 s after the build, and 25 s more for a
# pass of the staleness window alone (WINDOW=1: this tree's invalidator, one round); needs only the
# local PostgreSQL and redis-server (it starts a private Redis and a private Redis Cluster, and
# drops its own databases). CLUSTER=0 leaves the cluster side out.
# Checks correctness only (every request answered, hits served, freshness observed, no read
# older than the staleness window, files written), never timings. Ends with `N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit

out=$(mktemp -d "${TMPDIR:-/tmp}/openrisk-smoke.XXXXXX")
trap 'rm -rf "$out"' EXIT

TENANTS=1 RISKS=50 PHASE_SECS=1 ROUNDS=1 CONNECTIONS=4 RATE=200 HOT=50 FRESH_RISKS=2 VARIANTS=300 \
    BACKGROUND_WRITES=20 CLUSTER=${CLUSTER:-1} PROFILE=${PROFILE:-dev} WRK=0 PERF=0 COPY_PLOT=0 ALLOC_AB=0 OUT="$out" \
    load_tests/bench.sh >"$out/run.log" 2>&1
status=$?
mkdir -p "$out/window"
WINDOW=1 BASELINE='' TREE_VARIANTS=plain TENANTS=1 RISKS=50 PHASE_SECS=1 ROUNDS=1 CONNECTIONS=4 HOT=50 FRESH_RISKS=2 \
    WINDOW_WRITES=20 PROFILE=${PROFILE:-dev} COPY_PLOT=0 OUT="$out/window" \
    load_tests/bench.sh >"$out/window.log" 2>&1
window_status=$?

passed=0
failed=0
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out/run.log" | tail -1)
if [ -n "$line" ]; then
    passed=$(echo "$line" | cut -d' ' -f1)
    failed=$(echo "$line" | cut -d' ' -f3)
fi
grep -E '^(PASS|FAIL) ' "$out/run.log" || true
# The window pass prints its checks without a count line: each is counted here.
grep -E '^(PASS|FAIL) ' "$out/window.log" | sed 's/^\(PASS\|FAIL\) /\1 window pass: /' || true
passed=$((passed + $(grep -c '^PASS ' "$out/window.log")))
failed=$((failed + $(grep -c '^FAIL ' "$out/window.log")))
expect() {
    if eval "$2"; then
        echo "PASS $1"
        passed=$((passed + 1))
    else
        echo "FAIL $1"
        failed=$((failed + 1))
    fi
}
expect "bench.sh exited 0" '[ "$status" -eq 0 ]'
expect "the benchmark ran its checks" '[ -n "$line" ]'
expect "results.json was written" 'grep -q "\"freshness\"" "$out/results.json" 2>/dev/null'
expect "latency.svg was written" 'grep -q "<polyline" "$out/latency.svg" 2>/dev/null'
if [ "${CLUSTER:-1}" = 1 ]; then
    expect "the cluster was measured beside the node" 'grep -q "\"cluster_over_node_cached_detail_rps\": [0-9]" "$out/results.json" 2>/dev/null'
    expect "machine facts name the cluster" 'grep -q "^redis cluster:" "$out/machine.txt" 2>/dev/null'
fi
expect "machine facts were recorded" 'grep -q "^commit:" "$out/machine.txt" 2>/dev/null'
expect "bench.sh WINDOW=1 exited 0" '[ "$window_status" -eq 0 ]'
expect "window.json was written" 'grep -q "\"variants\"" "$out/window/window.json" 2>/dev/null'
if [ "$failed" -ne 0 ] || [ "$status" -ne 0 ] || [ "$window_status" -ne 0 ]; then
    echo "--- last lines of the run ---"
    tail -40 "$out/run.log"
    echo "--- last lines of the window pass ---"
    tail -20 "$out/window.log"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
