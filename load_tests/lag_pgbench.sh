#!/usr/bin/env bash
# The invalidator's own lag (`openrisk_invalidator_lag_seconds`) at fixed SQL write rates, with
# pgbench as the only writer and nothing of openrisk-bench on the cores: what the invalidator
# gives when only Postgres, Redis and itself (and, with READS=1, the API under wrk) share the
# machine. Single-row updates of one tenant's risks (the demo's of a running `scripts/dev-up.sh`),
# paced by pgbench's `-R`, so each write is a wake-up at low rates and part of a batch at high
# ones; each sets a new owner (an update that changes nothing emits no event). Prints, per rate,
# the writes made and the lag's p50 / p99 / p99.9 (and the same for each of its stages) as the
# upper bound of the histogram bucket that holds each (the buckets are 0.25, 0.5, 1, 1.5, 2, 3,
# 4, 5, 7.5, 10, 15, 20, 30, 50 ms …).
#
#   load_tests/lag_pgbench.sh               # 10, 100 and 500 writes/s, 20 s each
#   READS=1 load_tests/lag_pgbench.sh       # the same beside wrk reading cached risk details
#   READS=1 SPLIT_CORES=1 load_tests/lag_pgbench.sh
#                                           # the readers (the API and wrk) confined to the last
#                                           # core, the invalidation chain (Postgres, Redis, the
#                                           # invalidator, pgbench) to the others, as separate
#                                           # machines would have them; every affinity is restored
#                                           # on exit
#   READS=1 CHAIN_PRIORITY=realtime load_tests/lag_pgbench.sh
#                                           # every thread of the Postgres server of DATABASE_URL
#                                           # (its postmaster too, so the backends it starts later
#                                           # inherit it), the Redis of REDIS_URL and the invalidator
#                                           # of METRICS_URL at SCHED_FIFO 1
#                                           # for the run, on shared cores: the chain runs the
#                                           # moment it wakes, the readers get the rest; every
#                                           # policy is restored on exit
#
# Knobs (environment): RATES (default "10 100 500") STAGES (the lag's stages to report, default
# "commit outbox claim redis"; empty for none) SECS (per rate, default 20) READS (0/1)
# TENANT (the slug whose risks are written and read, default demo) SPLIT_CORES (0/1)
# CHAIN_PRIORITY (none, realtime; default none)
# CLIENTS (pgbench's connections, sharing the rate; default 1: enough for 500 writes/s on idle
# cores, not where each write waits for a busy one)
# DATABASE_URL REDIS_URL METRICS_URL (the invalidator's, default http://127.0.0.1:9464/metrics) API_URL
# (default http://127.0.0.1:8080) API_BIN (for the reader's token, default target/release/openrisk-api).
set -euo pipefail
cd "$(dirname "$0")/.."
source load_tests/wrk_details.sh

RATES=${RATES:-10 100 500}
# The parts of the lag to report beside it (per event for commit and outbox, per batch for claim
# and redis; commit only where Postgres records commit times).
STAGES=${STAGES-commit outbox claim redis}
SECS=${SECS:-20}
READS=${READS:-0}
SPLIT_CORES=${SPLIT_CORES:-0}
CHAIN_PRIORITY=${CHAIN_PRIORITY:-none}
CLIENTS=${CLIENTS:-1}
TENANT=${TENANT:-demo}
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/openrisk}"
METRICS_URL="${METRICS_URL:-http://127.0.0.1:9464/metrics}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
API_URL="${API_URL:-http://127.0.0.1:8080}"
API_BIN="${API_BIN:-${CARGO_TARGET_DIR:-target}/release/openrisk-api}"
command -v pgbench >/dev/null || { echo "pgbench is missing (Debian: postgresql-client)" >&2; exit 1; }
curl -fs "$METRICS_URL" >/dev/null || { echo "no invalidator metrics at $METRICS_URL: start scripts/dev-up.sh" >&2; exit 1; }

out=$(mktemp -d)
pids=()
postmaster='' redis_pid='' invalidator_pid='' api_pid=''  # found by chain_servers, when needed
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"; unsplit_cores; deprioritize_chain' EXIT

all_cores="0-$(( $(nproc) - 1 ))"
reader_cores=$(( $(nproc) - 1 ))
chain_cores="0-$(( $(nproc) - 2 ))"
# The pid listening on TCP port $1 of this machine (empty if none), and the port of a URL.
listener_pid() { ss -Hltnp "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1; }
port_of() { local rest=${1#*://}; rest=${rest%%/*}; echo "${rest##*:}"; }
# The processes behind this run's URLs, and no others on the machine (a test's private servers,
# another checkout's): the Postgres postmaster of DATABASE_URL, the Redis of REDIS_URL, the
# invalidator serving METRICS_URL and the API serving API_URL.
chain_servers() {
    postmaster=$(listener_pid "$(psql "$DATABASE_URL" -Atc 'SELECT inet_server_port()')")
    redis_pid=$(redis-cli -u "$REDIS_URL" INFO server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')
    invalidator_pid=$(listener_pid "$(port_of "$METRICS_URL")")
    api_pid=$(listener_pid "$(port_of "$API_URL")")
    local name needed=(postmaster redis_pid invalidator_pid)
    [ "$SPLIT_CORES" = 1 ] && needed+=(api_pid)
    for name in "${needed[@]}"; do
        [ -n "${!name}" ] || { echo "cannot find the process for $name (is scripts/dev-up.sh running?)" >&2; exit 1; }
    done
}
# The processes of the invalidation chain as they are now: the postmaster and every process it
# started (backends included), Redis, the invalidator.
chain_pids() {
    [ -n "$postmaster" ] || return 0
    echo "$postmaster"; pgrep -P "$postmaster" || true; echo "$redis_pid"; echo "$invalidator_pid"
}
# Every thread of the processes $2… onto the cores $1.
pin() {
    local cores=$1; shift
    local pid
    for pid in "$@"; do taskset -a -p -c "$cores" "$pid" >/dev/null 2>&1 || true; done
}
# The API onto the cores $1; the chain (new backends inherit the postmaster's affinity) onto $2.
place() {
    [ -n "$api_pid" ] && pin "$1" "$api_pid"
    # shellcheck disable=SC2046 # one pid per word
    pin "$2" $(chain_pids)
}
unsplit_cores() {
    [ "$SPLIT_CORES" = 1 ] || return 0
    place "$all_cores" "$all_cores"
}
prioritize_chain() {
    case "$CHAIN_PRIORITY" in
        none) return 0 ;;
        realtime) ;;
        *) echo "CHAIN_PRIORITY is none or realtime, not $CHAIN_PRIORITY" >&2; exit 1 ;;
    esac
    local pid
    for pid in $(chain_pids); do
        chrt -a -f -p 1 "$pid" >/dev/null || { echo "chrt -f failed for $pid: CHAIN_PRIORITY=realtime needs CAP_SYS_NICE" >&2; exit 1; }
    done
}
deprioritize_chain() {
    [ "$CHAIN_PRIORITY" = realtime ] || return 0
    local pid
    for pid in $(chain_pids); do chrt -a -o -p 0 "$pid" >/dev/null 2>&1 || true; done
}
if [ "$SPLIT_CORES" = 1 ] || [ "$CHAIN_PRIORITY" != none ]; then chain_servers; fi
prioritize_chain
# The running processes split, and where the ones this script starts run (any core unless split).
readers=()
chain=()
if [ "$SPLIT_CORES" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || { echo "SPLIT_CORES=1 needs at least 2 cores" >&2; exit 1; }
    place "$reader_cores" "$chain_cores"
    readers=(taskset -c "$reader_cores")
    chain=(taskset -c "$chain_cores")
fi

# Dead outbox rows left by earlier runs (a server without autovacuum, as this project's CI
# machines run theirs, keeps every claimed row) would make each run slower than the last.
psql "$DATABASE_URL" -qc "VACUUM cache_outbox"
tenant=$(psql "$DATABASE_URL" -Atc "SELECT id FROM tenants WHERE slug = '$TENANT'")
[ -n "$tenant" ] || { echo "no tenant $TENANT: start scripts/dev-up.sh" >&2; exit 1; }
risks=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM risks WHERE tenant_id = '$tenant' AND deleted_at IS NULL")
[ "$risks" -gt 0 ] || { echo "tenant $TENANT has no risks" >&2; exit 1; }
cat >"$out/update.sql" <<SQL
\set offset random(0, $((risks - 1)))
\set value random(1, 2000000000)
UPDATE risks SET owner = 'lag ' || :value
 WHERE id = (SELECT id FROM risks WHERE tenant_id = '$tenant' AND deleted_at IS NULL ORDER BY id OFFSET :offset LIMIT 1);
SQL

# The cumulative buckets of the lag, or given a stage's name those of that stage of it
# (`openrisk_invalidator_lag_stage_seconds`), one "upper-bound count" line each.
buckets() {
    local series=openrisk_invalidator_lag_seconds_bucket'{' label=
    if [ -n "${1:-}" ]; then series=openrisk_invalidator_lag_stage_seconds_bucket'{' label="stage=\"$1\""; fi
    curl -fs "$METRICS_URL" | grep -F "$series" | grep -F "$label" | sed -n 's/^.*le="\([^"]*\)"} \(.*\)$/\1 \2/p'
}

# p50, p99 and p99.9 in ms from two bucket snapshots: the first bound whose count reaches each.
quantiles() {
    paste "$1" "$2" | awk '
        { bound[NR] = $1; count[NR] = $4 - $2 }
        END {
            total = count[NR]
            if (total == 0) { print "no events"; exit }
            n = split("0.5 0.99 0.999", q, " ")
            line = sprintf("%d events, lag", total)
            for (i = 1; i <= n; i++) {
                for (b = 1; b <= NR && count[b] < q[i] * total; b++) {}
                line = line sprintf(" %s≤%s", (i == 1 ? "p50 " : (i == 2 ? "/ p99 " : "/ p99.9 ")),
                                    (bound[b] == "+Inf" ? "+Inf" : bound[b] * 1000 " ms"))
            }
            print line
        }'
}

# Waits (up to 30 s) until the outbox is empty and the lag histogram counted at least $1 events
# since the snapshot in $out/before, leaving its last snapshot in $out/after; fails otherwise.
# (The invalidator counts a batch's events right after committing their deletion, so an empty
# outbox alone may come a moment before the counts.)
await_applied() {
    local made=$1 left applied deadline=$((SECONDS + 30))
    while :; do
        buckets >"$out/after"
        left=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM cache_outbox")
        applied=$(paste "$out/before" "$out/after" | awk '$1 == "+Inf" { print $4 - $2 }')
        if [ "$left" = 0 ] && [ "${applied:-0}" -ge "$made" ]; then return 0; fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "30 s after the writes: $left events still in the outbox, ${applied:-0} of $made writes applied" >&2
            exit 1
        fi
        sleep 0.1
    done
}

if [ "$READS" = 1 ]; then
    command -v wrk >/dev/null || { echo "READS=1 needs wrk (Debian: wrk)" >&2; exit 1; }
    [ -x "$API_BIN" ] || { echo "no API binary at $API_BIN (for the readers' token): set API_BIN or CARGO_TARGET_DIR" >&2; exit 1; }
    token=$("$API_BIN" token create --tenant "$TENANT" --role viewer --name lag-pgbench)
    wrk_details "$DATABASE_URL" "$tenant" "$token" "$out/paths.lua"
    "${readers[@]}" wrk -t2 -c64 -d "$(( (SECS + 2) * $(wc -w <<<"$RATES") + 5 ))s" -s "$out/paths.lua" "$API_URL" >"$out/wrk.txt" &
    pids+=($!)
    sleep 3
fi

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), reads: $([ "$READS" = 1 ] && echo "wrk -t2 -c64 on cached risk details" || echo none)"
echo "pgbench clients: $CLIENTS"
[ "$SPLIT_CORES" = 1 ] && echo "cores: the API and wrk on $reader_cores; Postgres, Redis, the invalidator and pgbench on $chain_cores"
[ "$CHAIN_PRIORITY" = realtime ] && echo "priority: Postgres, Redis and the invalidator at SCHED_FIFO 1"
# Where Postgres records commit times the lag counts from each write's commit and the commit
# stage holds the rest of the writer's transaction; elsewhere the lag counts from the row change.
echo "track_commit_timestamp: $(psql "$DATABASE_URL" -Atc 'SHOW track_commit_timestamp')"
for rate in $RATES; do
    for part in "" $STAGES; do buckets "$part" >"$out/before$part"; done
    rm -f "$out"/pgbench_log.*
    made=$( (cd "$out" && "${chain[@]}" pgbench -n -c "$CLIENTS" -f update.sql -R "$rate" -T "$SECS" -l --log-prefix=pgbench_log "$DATABASE_URL" 2>&1) \
        | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    await_applied "$made"
    for stage in $STAGES; do buckets "$stage" >"$out/after$stage"; done
    echo "$rate writes/s for $SECS s ($made made): $(quantiles "$out/before" "$out/after")"
    # pgbench's own latency per write (µs: from sending the update to its commit returning;
    # under -R the log's column 3 counts from the scheduled start, so the schedule lag, column 7,
    # comes off), which the commit stage (or, without commit times, the outbox stage) overlaps.
    cat "$out"/pgbench_log.* | awk '{ print ($3 - $7) / 1000 }' | sort -n | awk '
        { v[NR] = $1 }
        END { if (NR) printf "    the writes themselves (pgbench latency): p50 %.1f / p99 %.1f / p99.9 %.1f ms\n",
                             v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], v[int(NR * 0.999) + 1] }'
    for stage in $STAGES; do
        echo "    stage $stage: $(quantiles "$out/before$stage" "$out/after$stage" | sed 's/events, lag/observed/')"
    done
done
if [ "$READS" = 1 ]; then
    wait "${pids[@]}" 2>/dev/null || true
    sed -n 's/^Requests\/sec: *\(.*\)/reads: \1 req\/s (wrk)/p' "$out/wrk.txt"
    # The lags above were measured beside a read load only if the readers were answered.
    wrk_answered_all "$(<"$out/wrk.txt")" "the readers (wrk)" || exit 1
fi
