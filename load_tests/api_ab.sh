#!/usr/bin/env bash
# Two builds of the API side by side at saturation on cached risk details: throughput (wrk) and
# the API's own CPU per request (/proc), alternated over ROUNDS so both see the same machine.
# Both serve the demo tenant of a running `scripts/dev-up.sh` (its database and Redis), each on a
# free port of its own; the cache is warmed first, so every measured request is a hit. Use it to
# decide whether a change to the hit path pays (bench.sh measures the tree against the ceiling).
#
#   BASELINE=/tmp/openrisk-api-before load_tests/api_ab.sh
#   BASELINE=/tmp/before CANDIDATE=/tmp/after ROUNDS=5 SECS=10 load_tests/api_ab.sh
#
# Knobs (environment): BASELINE (required: an openrisk-api binary) CANDIDATE (default this tree's
# release build) ROUNDS (default 4) SECS (per round and binary, default 8) CONNECTIONS (default 64)
# TENANT (default demo) DATABASE_URL REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
source load_tests/wrk_details.sh
source scripts/free-port.sh

: "${BASELINE:?set BASELINE to the openrisk-api binary to compare against}"
CANDIDATE=${CANDIDATE:-${CARGO_TARGET_DIR:-target}/release/openrisk-api}
ROUNDS=${ROUNDS:-4}
SECS=${SECS:-8}
CONNECTIONS=${CONNECTIONS:-64}
TENANT=${TENANT:-demo}
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/openrisk}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
command -v wrk >/dev/null || { echo "wrk is missing (Debian: wrk)" >&2; exit 1; }

out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"' EXIT

tenant=$(psql "$DATABASE_URL" -Atc "SELECT id FROM tenants WHERE slug = '$TENANT'")
[ -n "$tenant" ] || { echo "no tenant $TENANT: start scripts/dev-up.sh" >&2; exit 1; }
token=$("$CANDIDATE" token create --tenant "$TENANT" --role viewer --name api-ab 2>/dev/null)
wrk_details "$DATABASE_URL" "$tenant" "$token" "$out/paths.lua"

# Requests/sec of a wrk run of $2 against port $1; fails when wrk did not finish or when any
# request was answered with an error status or lost on its socket (wrk_answered_all).
rate_of() {
    local report
    report=$(wrk -t2 -c"$CONNECTIONS" -d"$2" -s "$out/paths.lua" "http://127.0.0.1:$1") \
        || { echo "wrk failed against :$1" >&2; return 1; }
    wrk_answered_all "$report" "wrk against :$1" || return 1
    sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$report"
}

declare -A port pid
for variant in baseline candidate; do
    binary=$BASELINE
    [ "$variant" = candidate ] && binary=$CANDIDATE
    port[$variant]=$(free_port)
    API_ADDR="127.0.0.1:${port[$variant]}" METRICS_ADDR="127.0.0.1:$(free_port)" "$binary" serve >"$out/$variant.log" 2>&1 &
    pid[$variant]=$!
    pids+=($!)
done
# One risk the token may read: each binary must answer it 200 before anything is timed.
risk=$(psql "$DATABASE_URL" -Atc "SELECT id FROM risks WHERE tenant_id = '$tenant' AND deleted_at IS NULL LIMIT 1")
for variant in baseline candidate; do
    for _ in $(seq 50); do curl -fs "http://127.0.0.1:${port[$variant]}/readyz" >/dev/null && break; sleep 0.2; done
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
        "http://127.0.0.1:${port[$variant]}/api/v1/risks/$risk" || true)
    if [ "$status" != 200 ]; then
        echo "$variant answered $status to GET /api/v1/risks/$risk with the token; its log:" >&2
        tail -5 "$out/$variant.log" >&2
        exit 1
    fi
    rate_of "${port[$variant]}" 2s >/dev/null
done

# User and system ticks of a process.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), wrk -t2 -c$CONNECTIONS, $ROUNDS rounds of $SECS s"
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for variant in baseline candidate; do
        before=$(ticks "${pid[$variant]}")
        rate=$(rate_of "${port[$variant]}" "${SECS}s")
        after=$(ticks "${pid[$variant]}")
        awk -v v="$variant" -v r="$round" -v rate="$rate" -v t="$((after - before))" -v hz="$hz" -v s="$SECS" \
            'BEGIN { printf "round %d %-9s %8.0f req/s  API CPU %5.1f µs/request\n", r, v, rate, t / hz * 1e6 / (rate * s) }' \
            | tee -a "$out/rounds.txt"
    done
done
awk '{ rate[$3] += $4; cpu[$3] += $8; n[$3]++ }
     END { printf "mean: baseline %.0f req/s %.1f µs, candidate %.0f req/s %.1f µs; candidate ÷ baseline: throughput %.2f, CPU per request %.2f\n",
                  rate["baseline"] / n["baseline"], cpu["baseline"] / n["baseline"], rate["candidate"] / n["candidate"],
                  cpu["candidate"] / n["candidate"], rate["candidate"] / rate["baseline"], cpu["candidate"] / cpu["baseline"] }' "$out/rounds.txt"
