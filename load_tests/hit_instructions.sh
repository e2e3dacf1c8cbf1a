#!/usr/bin/env bash
# What one cached GET costs the server in CPU instructions: the API's cached risk detail and
# cached list page against the ceiling (a minimal poem server answering from one Redis GET, with
# the same bodies), each server run under valgrind's callgrind, which counts instructions, so
# the figures repeat to about 1 % whatever else the machine is doing (throughput on this shared
# 2-core machine moves by tens of percent). Use it to compare hit-path designs; use bench.sh for
# what the instructions turn into in requests per second.
#
#   load_tests/hit_instructions.sh              # 2000 requests per route after 300 warm-up
#   REQUESTS=5000 load_tests/hit_instructions.sh
#   API_BASELINE=/tmp/openrisk-api-before load_tests/hit_instructions.sh   # and another API binary
#
# Each server's counters are zeroed after the warm-up (callgrind_control -z) and read after the
# measured requests (callgrind_control -e Ir); instructions per request = that total / REQUESTS. One client
# connection, requests one after another (python's http.client, keep-alive), so the server does
# the same work per request as under load minus the batching of a busy event loop. Private
# Redis and database on free ports / a private database name, dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-300}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$repo/load_tests/out/hit-instructions}

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
log() { printf '[hit-instructions %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cargo build --release --quiet --bin openrisk-api --bin ceiling
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.*

source scripts/free-port.sh
redis_port=$(free_port)
api_port=$(free_port)
metrics_port=$(free_port)
ceiling_port=$(free_port)
db="openrisk_hit_instructions_$$"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    psql "$PG_ADMIN_URL" -qXc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --maxmemory 256mb --maxmemory-policy volatile-lru >"$OUT/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
psql "$PG_ADMIN_URL" -qXc "CREATE DATABASE \"$db\"" >/dev/null
export DATABASE_URL="${PG_ADMIN_URL%/*}/$db" REDIS_URL="redis://127.0.0.1:$redis_port"
export OPENRISK_LOG__FILTER=warn OPENRISK_CACHE__KEY_PREFIX=hit
"$bin/openrisk-api" migrate >"$OUT/migrate.log" 2>&1
"$bin/openrisk-api" seed --tenants 1 --risks 200 >"$OUT/seed.log" 2>&1
tenant=$(psql "$DATABASE_URL" -AtXc "SELECT id FROM tenants LIMIT 1")
risk=$(psql "$DATABASE_URL" -AtXc "SELECT r.id FROM risks r JOIN risk_assets a ON a.risk_id = r.id LIMIT 1")
token=$("$bin/openrisk-api" token create --tenant "$tenant" --role analyst --name hit 2>/dev/null)
detail="/api/v1/risks/$risk"
list="/api/v1/risks?sort_by=score&sort_dir=desc&page=1&limit=20"

# measure PORT PATH COUNT [TOKEN]: COUNT keep-alive GETs on one connection, every answer 200.
measure() {
    python3 - "$@" <<'EOF'
import http.client, sys
port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
headers = {"Authorization": "Bearer " + sys.argv[4]} if len(sys.argv) > 4 else {}
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(count):
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"GET {path}: {response.status} {body[:200]!r}")
EOF
}

# instructions NAME PID PORT PATH [TOKEN]: the server's instructions per request on PATH.
instructions() {
    local name=$1 pid=$2 port=$3 path=$4
    shift 4
    measure "$port" "$path" "$WARMUP" "$@"
    callgrind_control -z "$pid" >/dev/null
    measure "$port" "$path" "$REQUESTS" "$@"
    local total
    # "Totals: Ir" then one "Th <n> <count>" line per thread: their sum.
    total=$(callgrind_control -e Ir "$pid" | awk '$1 == "Th" { gsub(",", "", $3); sum += $3 } END { print sum + 0 }')
    awk -v total="$total" -v n="$REQUESTS" -v name="$name" \
        'BEGIN { printf "%-16s %10.0f instructions per request\n", name, total / n }' | tee -a "$OUT/summary.txt"
}

# A server of each kind under callgrind; each answers once it is up (slowly, under valgrind).
# start_api NAME BINARY PORT METRICS_PORT: an API under callgrind; sets api_pid.
start_api() {
    API_ADDR="127.0.0.1:$3" METRICS_ADDR="127.0.0.1:$4" \
        valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$1.%p" "$2" serve >"$OUT/$1.log" 2>&1 &
    api_pid=$!
    pids+=("$api_pid")
    for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$3/healthz" 2>/dev/null && return; sleep 0.1; done
    echo "$1 did not start" >&2
    return 1
}
if [ -n "${API_BASELINE:-}" ]; then
    baseline_port=$(free_port)
    start_api baseline "$API_BASELINE" "$baseline_port" "$(free_port)"
    baseline_pid=$api_pid
fi
start_api api "$bin/openrisk-api" "$api_port" "$metrics_port"
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.ceiling.%p" \
    "$bin/ceiling" --addr "127.0.0.1:$ceiling_port" --redis-url "$REDIS_URL" --key hit:ceiling \
    --key-prefix hit >"$OUT/ceiling.log" 2>&1 &
ceiling_pid=$!
pids+=("$ceiling_pid")
for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$ceiling_port") 2>/dev/null && break; sleep 0.1; done
curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port$detail" -o "$OUT/detail.json"
curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port$list" -o "$OUT/list.json"
redis-cli -p "$redis_port" -x SET hit:ceiling <"$OUT/detail.json" >/dev/null
redis-cli -p "$redis_port" -x SET hit:ceiling:list:0 <"$OUT/list.json" >/dev/null

: >"$OUT/summary.txt"
log "$REQUESTS requests per route after $WARMUP warm-up (detail $(wc -c <"$OUT/detail.json") bytes, list $(wc -c <"$OUT/list.json") bytes)"
instructions ceiling "$ceiling_pid" "$ceiling_port" /ceiling
instructions detail "$api_pid" "$api_port" "$detail" "$token"
instructions ceiling-list "$ceiling_pid" "$ceiling_port" /ceiling/list/0
instructions list "$api_pid" "$api_port" "$list" "$token"
if [ -n "${API_BASELINE:-}" ]; then
    instructions baseline-detail "$baseline_pid" "$baseline_port" "$detail" "$token"
    instructions baseline-list "$baseline_pid" "$baseline_port" "$list" "$token"
fi
awk '{ n[$1] = $2 } END {
    printf "detail ÷ ceiling %.2f, list ÷ ceiling-list %.2f (instructions per request)\n", n["detail"] / n["ceiling"], n["list"] / n["ceiling-list"]
    if (n["baseline-detail"] > 0) printf "this API ÷ baseline: detail %.2f, list %.2f\n", n["detail"] / n["baseline-detail"], n["list"] / n["baseline-list"]
}' "$OUT/summary.txt" | tee -a "$OUT/summary.txt"
for pid in "$api_pid" "$ceiling_pid" ${baseline_pid:-}; do callgrind_control --dump "$pid" >/dev/null; done
log "callgrind profiles in $OUT (callgrind_annotate FILE | head -60)"
