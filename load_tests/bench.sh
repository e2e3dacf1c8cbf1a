#!/usr/bin/env bash
# shellcheck disable=SC2154 # the *_port variables are set by take_ports (printf -v)
# One-command HTTP benchmark of the cache, loopback only, bounded to a few minutes.
#
#   load_tests/bench.sh                       # 20 tenants × 5000 risks, 8 s phases (~4 min)
#   TENANTS=1 RISKS=50 PHASE_SECS=1 load_tests/bench.sh   # seconds
#
# It builds (release), starts a private Redis on a free port and creates a private database on
# the local PostgreSQL (dropped at the end), migrates and seeds it, creates one analyst token per
# tenant, then starts: the API with the cache on, a second API with the cache off
# (OPENRISK_CACHE__ENABLED=false), the invalidator, and the ceiling (a minimal poem server
# answering from one Redis GET). `openrisk-bench` then measures everything side by side and
# writes results.json, summary.md and latency.svg into $OUT (load_tests/out, gitignored).
#
# With CLUSTER=1 (the default) it also starts a private Redis Cluster (3 masters, 3 replicas,
# `openrisk-test-cluster`), a second database seeded alike for a cached API and an invalidator
# on the cluster (REDIS_REPLICAS_ACK 1, the cluster default), and a third, small database for an
# invalidator on the same cluster with REDIS_REPLICAS_ACK=0; openrisk-bench then measures cached
# GET throughput and invalidation lag on the cluster beside the single node, and the cost of the
# WAIT. The seed and token commands run with the cluster's redis-cluster:// URL there.
#
# Knobs (environment): TENANTS RISKS PHASE_SECS ROUNDS CONNECTIONS RATE HOT FRESH_RISKS VARIANTS
# FRESH_BACKGROUND_RATE BACKGROUND_WRITES CLUSTER (1/0) LAG_WRITES (writes/s of each lag phase) PROFILE (release|dev) OUT WRK (1/0: also measure with wrk if installed)
# PERF (1: perf profile of the cached API's hit path into $OUT/perf-hit-*.txt) COPY_PLOT (1: copy the plot to
# load_tests/latency.svg) ALLOC_AB (1: also a cached API built with the system allocator) PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres).
#
# The staleness window under load, alone (issue 15): WINDOW=1 starts only the cached API and
# measures each invalidator variant in turn, interleaved over ROUNDS (openrisk-bench --window):
# the largest lag in its first second, then the window and the lag at WINDOW_WRITES SQL
# writes/s (default 500) with idle cores and with the API at saturation (CONNECTIONS). The
# variants: BASELINE (a git ref, default e35b86c: the last invalidator before its LISTEN task;
# empty to skip) built in $OUT/baseline, this tree's invalidator, the same lingering LINGER_MS (default 5) before parking, and the same at
# nice INVALIDATOR_NICE (default -10, as an operator would give it more CPU weight than the API;
# where this shell may set it: CAP_SYS_NICE for a negative one),
# and the same with the API at nice API_NICE (default 10) during the phases (a lower CPU weight for
# the read path than for Postgres, Redis and the invalidator), and where this shell may set
# real-time priority (CAP_SYS_NICE) the same with the whole chain at SCHED_FIFO 1 (`realtime`
# below); those after this tree's own are left out with TREE_VARIANTS=plain (an A/B of the
# baseline against this tree alone); WINDOW_VARIANTS adds
# `label=path[,nice=N][,linger=MS][,api_nice=N][,realtime|,slice=US]` entries (`realtime`: the
# invalidator, every process of the Postgres server and Redis at SCHED_FIFO 1 while the variant
# runs; `slice`: the same three with a custom time slice of US µs, Linux 6.12 or later). The
# freshness readers pause
# READ_INTERVAL_MS (default 1) between reads until they see their risk's latest write, so they
# sample the window to the millisecond, and READ_SETTLED_MS (default 20) once they have seen it,
# woken at once by the next write: the measurement does not load the cores between windows.
# Writes window.md/window.json.
#
#   WINDOW=1 TENANTS=4 RISKS=1000 PHASE_SECS=8 ROUNDS=2 load_tests/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

TENANTS=${TENANTS:-20}
RISKS=${RISKS:-5000}
PHASE_SECS=${PHASE_SECS:-8}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-2000}
HOT=${HOT:-1000}
FRESH_RISKS=${FRESH_RISKS:-4}
VARIANTS=${VARIANTS:-20000}
if [ -z "${FRESH_BACKGROUND_RATE:-}" ]; then
    # A quarter of RATE, in whole requests per second: below RATE=4 that would be none.
    case "$RATE" in
        '' | *[!0-9]*) echo "RATE must be a whole number of requests per second (or set FRESH_BACKGROUND_RATE), not '$RATE'" >&2; exit 1 ;;
    esac
    if [ "$RATE" -lt 4 ]; then
        echo "RATE must be at least 4: the freshness phase runs the mix at RATE/4 per second (or set FRESH_BACKGROUND_RATE)" >&2
        exit 1
    fi
    FRESH_BACKGROUND_RATE=$((RATE / 4))
fi
BACKGROUND_WRITES=${BACKGROUND_WRITES:-100}
PROFILE=${PROFILE:-release}
OUT=${OUT:-$repo/load_tests/out}
WRK=${WRK:-1}
PERF=${PERF:-0}
COPY_PLOT=${COPY_PLOT:-1}
# Another API instance (cache on) built without its jemalloc feature, so with the system
# allocator, measured at saturation against the first: what the allocator buys.
ALLOC_AB=${ALLOC_AB:-1}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
CLUSTER=${CLUSTER:-1}
LAG_WRITES=${LAG_WRITES:-50}
WINDOW=${WINDOW:-0}
BASELINE=${BASELINE-e35b86c}
WINDOW_WRITES=${WINDOW_WRITES:-500}
LINGER_MS=${LINGER_MS:-5}
READ_INTERVAL_MS=${READ_INTERVAL_MS:-1}
READ_SETTLED_MS=${READ_SETTLED_MS:-20}
INVALIDATOR_NICE=${INVALIDATOR_NICE:--10}
API_NICE=${API_NICE:-10}
WINDOW_VARIANTS=${WINDOW_VARIANTS:-}
TREE_VARIANTS=${TREE_VARIANTS:-all}
if [ "$WINDOW" = 1 ]; then CLUSTER=0; fi

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/perf-hit.data" "$OUT/perf-hit-dso.txt" "$OUT/perf-hit-symbols.txt"

# ---- build -------------------------------------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-$repo/target}
if [ "$WINDOW" = 1 ] && [ -n "$BASELINE" ]; then
    # A target directory of its own, seeded with this one's dependencies: the two trees' crates
    # have the same names and hashes, so sharing one would hand either tree the other's build.
    log "building the baseline invalidator from $BASELINE ($(git rev-parse --short "$BASELINE"))"
    case "$PROFILE" in dev) profile_dir=debug ;; *) profile_dir=$PROFILE ;; esac
    rm -rf "$OUT/baseline/src" && mkdir -p "$OUT/baseline/src" "$OUT/baseline/target"
    # -m: the sources get the current time, newer than any copied artifact of this tree's crates.
    git archive "$BASELINE" | tar -x -m -C "$OUT/baseline/src"
    if [ ! -d "$OUT/baseline/target/$profile_dir" ] && [ -d "$target_dir/$profile_dir" ]; then
        cp -a "$target_dir/$profile_dir" "$OUT/baseline/target/"
    fi
    CARGO_TARGET_DIR="$OUT/baseline/target" cargo build --quiet --profile "$PROFILE" \
        --manifest-path "$OUT/baseline/src/Cargo.toml" --bin openrisk-invalidator
    cp "$OUT/baseline/target/$profile_dir/openrisk-invalidator" "$OUT/baseline/openrisk-invalidator"
fi
case "$PROFILE" in
    dev) bin="$target_dir/debug" ;;
    *) bin="$target_dir/$PROFILE" ;;
esac
binaries=(--bin openrisk-api --bin openrisk-invalidator --bin ceiling --bin openrisk-bench --bin openrisk-test-cluster)
if [ "$ALLOC_AB" = 1 ] && [ "$WINDOW" != 1 ]; then
    # The same selection, so every dependency keeps its features and only the API's allocator differs.
    log "building the API with the system allocator ($PROFILE)"
    cargo build --quiet --profile "$PROFILE" --no-default-features "${binaries[@]}"
    cp "$bin/openrisk-api" "$OUT/openrisk-api-system-allocator"
fi
log "building ($PROFILE)"
cargo build --quiet --profile "$PROFILE" "${binaries[@]}"

# ---- cleanup of exactly what this script started ---------------------------------------------
pids=()
dbs=()
cluster_pid=""
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$cluster_pid" ]; then
        # The cluster stops its nodes when its standard input closes.
        if [ -n "${CLUSTER_NODES[1]:-}" ]; then
            local input=${CLUSTER_NODES[1]}
            exec {input}>&-
        fi
        wait "$cluster_pid" 2>/dev/null || true
    fi
    for one in "${dbs[@]}"; do
        psql "$PG_ADMIN_URL" -qXc "DROP DATABASE IF EXISTS \"$one\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- free loopback ports -----------------------------------------------------------------------
taken=" "
# take_ports NAME:FROM...: sets each NAME to the first port from FROM up that nothing listens on
# and no earlier NAME took.
take_ports() {
    local spec name from port found
    for spec in "$@"; do
        name=${spec%%:*} from=${spec#*:} found=""
        for port in $(seq "$from" $((from + 500))); do
            case "$taken" in *" $port "*) continue ;; esac
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                found=$port
                break
            fi
        done
        [ -n "$found" ] || { echo "no free port from $from" >&2; exit 1; }
        taken="$taken$found "
        printf -v "$name" '%s' "$found"
    done
}
# The APIs' /metrics (METRICS_ADDR) are the *_metrics_port ones; only the cached one's is read.
take_ports redis_port:16400 cached_port:18080 uncached_port:18180 ceiling_port:18280 alt_port:18480 \
    invalidator_port:18380 cached_metrics_port:18580 uncached_metrics_port:18680 alt_metrics_port:18780 \
    second_port:19280 second_metrics_port:19380 \
    cluster_api_port:18880 cluster_invalidator_port:18980 ack0_invalidator_port:19080 \
    cluster_api_metrics_port:19180

wait_http() {
    local url=$1 what=$2
    for _ in $(seq 200); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "$what did not answer $url; its log:"
    tail -20 "$OUT/logs/$what.log" >&2 || true
    return 1
}

# ---- private Redis -------------------------------------------------------------------------------
log "redis on 127.0.0.1:$redis_port (private, volatile-lru)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --maxmemory 1gb --maxmemory-policy volatile-lru --dir "$OUT" >"$OUT/logs/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
export REDIS_URL="redis://127.0.0.1:$redis_port"

# ---- private database ------------------------------------------------------------------------
db="openrisk_bench_$$"
log "database $db: migrate, seed $TENANTS tenants × $RISKS risks"
psql "$PG_ADMIN_URL" -qXc "CREATE DATABASE \"$db\"" >/dev/null
dbs+=("$db")
db_url="${PG_ADMIN_URL%/*}/$db"
export DATABASE_URL="$db_url"
export OPENRISK_LOG__FILTER=${OPENRISK_LOG__FILTER:-warn}
export OPENRISK_CACHE__KEY_PREFIX=bench
"$bin/openrisk-api" migrate >"$OUT/logs/migrate.log" 2>&1
seed_started=$(date +%s%N)
"$bin/openrisk-api" seed --tenants "$TENANTS" --risks "$RISKS" >"$OUT/logs/seed.log" 2>&1
seed_secs=$(awk -v a="$seed_started" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
log "seeded in ${seed_secs}s: $(tail -1 "$OUT/logs/seed.log")"
: >"$OUT/tokens.txt"
for tenant in $(psql "$db_url" -AtXc "SELECT id FROM tenants ORDER BY slug"); do
    token=$("$bin/openrisk-api" token create --tenant "$tenant" --role analyst --name bench 2>/dev/null)
    echo "$tenant $token" >>"$OUT/tokens.txt"
done
counts=$(psql "$db_url" -AtXc "SELECT (SELECT count(*) FROM risks) || ' risks, ' || (SELECT count(*) FROM mitigations) || ' mitigations, ' || (SELECT count(*) FROM mitigation_subactions) || ' sub-actions, ' || (SELECT count(*) FROM assets) || ' assets, ' || (SELECT count(*) FROM risk_assets) || ' risk-asset links'")
log "data set: $counts"

# ---- the Redis Cluster side --------------------------------------------------------------------
cluster_flags=()
if [ "$CLUSTER" = 1 ]; then
    # Not named CLUSTER: a coprocess's name becomes an array of its descriptors, and $CLUSTER
    # (the 1/0 setting) is read again at the end.
    coproc CLUSTER_NODES { exec "$bin/openrisk-test-cluster"; }
    cluster_pid=$CLUSTER_NODES_PID
    if ! read -r -t 120 cluster_url <&"${CLUSTER_NODES[0]}"; then
        log "the private Redis Cluster did not start"
        exit 1
    fi
    log "redis cluster $cluster_url (private, 3 masters + 3 replicas)"
    cluster_db="${db}_cluster"
    ack0_db="${db}_ack0"
    psql "$PG_ADMIN_URL" -qXc "CREATE DATABASE \"$cluster_db\"" >/dev/null
    dbs+=("$cluster_db")
    psql "$PG_ADMIN_URL" -qXc "CREATE DATABASE \"$ack0_db\"" >/dev/null
    dbs+=("$ack0_db")
    cluster_db_url="${PG_ADMIN_URL%/*}/$cluster_db"
    ack0_db_url="${PG_ADMIN_URL%/*}/$ack0_db"
    log "database $cluster_db (cluster side): migrate, seed $TENANTS tenants × $RISKS risks; $ack0_db: 1 × 20"
    REDIS_URL="$cluster_url" DATABASE_URL="$cluster_db_url" "$bin/openrisk-api" migrate >"$OUT/logs/migrate-cluster.log" 2>&1
    REDIS_URL="$cluster_url" DATABASE_URL="$cluster_db_url" \
        "$bin/openrisk-api" seed --tenants "$TENANTS" --risks "$RISKS" >"$OUT/logs/seed-cluster.log" 2>&1
    REDIS_URL="$cluster_url" DATABASE_URL="$ack0_db_url" "$bin/openrisk-api" migrate >"$OUT/logs/migrate-ack0.log" 2>&1
    REDIS_URL="$cluster_url" DATABASE_URL="$ack0_db_url" \
        "$bin/openrisk-api" seed --tenants 1 --risks 20 >"$OUT/logs/seed-ack0.log" 2>&1
    : >"$OUT/tokens-cluster.txt"
    for tenant in $(psql "$cluster_db_url" -AtXc "SELECT id FROM tenants ORDER BY slug"); do
        token=$(REDIS_URL="$cluster_url" DATABASE_URL="$cluster_db_url" \
            "$bin/openrisk-api" token create --tenant "$tenant" --role analyst --name bench 2>/dev/null)
        echo "$tenant $token" >>"$OUT/tokens-cluster.txt"
    done
    log "invalidators on the cluster: REDIS_REPLICAS_ACK 1 (metrics :$cluster_invalidator_port), 0 (:$ack0_invalidator_port)"
    REDIS_URL="$cluster_url" DATABASE_URL="$cluster_db_url" METRICS_ADDR="127.0.0.1:$cluster_invalidator_port" \
        "$bin/openrisk-invalidator" run >"$OUT/logs/invalidator-cluster.log" 2>&1 &
    pids+=("$!")
    REDIS_URL="$cluster_url" DATABASE_URL="$ack0_db_url" METRICS_ADDR="127.0.0.1:$ack0_invalidator_port" \
        OPENRISK_INVALIDATOR__REDIS_REPLICAS_ACK=0 OPENRISK_CACHE__KEY_PREFIX=benchack0 \
        "$bin/openrisk-invalidator" run >"$OUT/logs/invalidator-cluster-ack0.log" 2>&1 &
    pids+=("$!")
    log "API with the cache on the cluster on 127.0.0.1:$cluster_api_port"
    REDIS_URL="$cluster_url" DATABASE_URL="$cluster_db_url?application_name=api-cluster" \
        API_ADDR="127.0.0.1:$cluster_api_port" METRICS_ADDR="127.0.0.1:$cluster_api_metrics_port" "$bin/openrisk-api" serve >"$OUT/logs/api-cluster.log" 2>&1 &
    pids+=("$!")
    wait_http "http://127.0.0.1:$cluster_api_port/healthz" api-cluster
    wait_http "http://127.0.0.1:$cluster_invalidator_port/metrics" invalidator-cluster
    wait_http "http://127.0.0.1:$ack0_invalidator_port/metrics" invalidator-cluster-ack0
    cluster_flags=(--cluster-cached "127.0.0.1:$cluster_api_port" --cluster-database-url "$cluster_db_url"
        --cluster-tokens "$OUT/tokens-cluster.txt" --cluster-invalidator-metrics "127.0.0.1:$cluster_invalidator_port"
        --cluster-ack0-database-url "$ack0_db_url" --cluster-ack0-invalidator-metrics "127.0.0.1:$ack0_invalidator_port"
        --lag-writes "$LAG_WRITES")
fi

# Starts the API under test, with the cache, in the background (api_pid; stopped by cleanup).
start_cached_api() {
    DATABASE_URL="$db_url?application_name=api-cached" API_ADDR="127.0.0.1:$cached_port" \
        METRICS_ADDR="127.0.0.1:$cached_metrics_port" \
        "$bin/openrisk-api" serve >"$OUT/logs/api-cached.log" 2>&1 &
    api_pid=$!
    pids+=("$api_pid")
}

# ---- the window under load alone ------------------------------------------------------------------
if [ "$WINDOW" = 1 ]; then
    log "API with the cache on 127.0.0.1:$cached_port; invalidators started by openrisk-bench --window"
    start_cached_api
    wait_http "http://127.0.0.1:$cached_port/healthz" api-cached
    variants=()
    if [ -n "$BASELINE" ]; then variants+=(--invalidator-variant "baseline ($BASELINE)=$OUT/baseline/openrisk-invalidator"); fi
    variants+=(--invalidator-variant "this tree=$bin/openrisk-invalidator,linger=0")
    if [ "$TREE_VARIANTS" = all ]; then
        variants+=(--invalidator-variant "this tree, linger $LINGER_MS ms=$bin/openrisk-invalidator,linger=$LINGER_MS")
        # Only where nice can set it: without CAP_SYS_NICE a negative niceness falls back to 0
        # (openrisk-bench refuses a variant that does not run at its niceness).
        if [ "$(nice -n "$INVALIDATOR_NICE" nice 2>/dev/null)" = "$INVALIDATOR_NICE" ]; then
            variants+=(--invalidator-variant "this tree, nice $INVALIDATOR_NICE=$bin/openrisk-invalidator,linger=0,nice=$INVALIDATOR_NICE")
        else
            log "nice $INVALIDATOR_NICE is not allowed here (CAP_SYS_NICE): that variant is left out"
        fi
        variants+=(--invalidator-variant "this tree, API at nice $API_NICE=$bin/openrisk-invalidator,linger=0,api_nice=$API_NICE")
        if chrt -f 1 true 2>/dev/null; then
            variants+=(--invalidator-variant "this tree, real-time chain=$bin/openrisk-invalidator,linger=0,realtime")
        fi
    fi
    for extra in $WINDOW_VARIANTS; do variants+=(--invalidator-variant "$extra"); done
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)'); baseline: ${BASELINE:-none} $(if [ -n "$BASELINE" ]; then git rev-parse --short "$BASELINE"; fi)"
        echo "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "knobs: WINDOW=1 TENANTS=$TENANTS RISKS=$RISKS PHASE_SECS=$PHASE_SECS ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS WINDOW_WRITES=$WINDOW_WRITES LINGER_MS=$LINGER_MS INVALIDATOR_NICE=$INVALIDATOR_NICE API_NICE=$API_NICE TREE_VARIANTS=$TREE_VARIANTS READ_INTERVAL_MS=$READ_INTERVAL_MS READ_SETTLED_MS=$READ_SETTLED_MS; data set: $counts"
    } >"$OUT/machine.txt"
    cat "$OUT/machine.txt" >&2
    status=0
    # --uncached, --ceiling and the pids other than the API's are not used with --window.
    "$bin/openrisk-bench" --window "${variants[@]}" --window-writes "$WINDOW_WRITES" \
        --cached "127.0.0.1:$cached_port" --uncached "127.0.0.1:$cached_port" --ceiling "127.0.0.1:$cached_port" \
        --invalidator-metrics "127.0.0.1:$invalidator_port" --cached-metrics "127.0.0.1:$cached_metrics_port" \
        --database-url "$db_url" --redis-url "$REDIS_URL" --tokens "$OUT/tokens.txt" \
        --api-pid "$api_pid" --uncached-pid 0 --invalidator-pid 0 \
        --phase-secs "$PHASE_SECS" --rounds "$ROUNDS" --connections "$CONNECTIONS" --hot "$HOT" \
        --fresh-risks "$FRESH_RISKS" --read-interval-ms "$READ_INTERVAL_MS" --settled-read-interval-ms "$READ_SETTLED_MS" \
        --key-prefix "$OPENRISK_CACHE__KEY_PREFIX" --out "$OUT" 2>&1 | tee "$OUT/window.log" || status=$?
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
    cat "$OUT/machine.txt" >&2
    exit "$status"
fi

# ---- the processes under test ------------------------------------------------------------------
log "invalidator (metrics 127.0.0.1:$invalidator_port)"
METRICS_ADDR="127.0.0.1:$invalidator_port" "$bin/openrisk-invalidator" run >"$OUT/logs/invalidator.log" 2>&1 &
invalidator_pid=$!
pids+=("$invalidator_pid")
log "API with the cache on 127.0.0.1:$cached_port, without on 127.0.0.1:$uncached_port"
start_cached_api
DATABASE_URL="$db_url?application_name=api-uncached" API_ADDR="127.0.0.1:$uncached_port" OPENRISK_CACHE__ENABLED=false \
    METRICS_ADDR="127.0.0.1:$uncached_metrics_port" \
    "$bin/openrisk-api" serve >"$OUT/logs/api-uncached.log" 2>&1 &
uncached_pid=$!
pids+=("$uncached_pid")
# A second API process like the first: the two together measure what one Redis core serves.
DATABASE_URL="$db_url?application_name=api-second" API_ADDR="127.0.0.1:$second_port" \
    METRICS_ADDR="127.0.0.1:$second_metrics_port" "$bin/openrisk-api" serve >"$OUT/logs/api-second.log" 2>&1 &
second_pid=$!
pids+=("$second_pid")
wait_http "http://127.0.0.1:$second_port/healthz" api-second
more_api_flags=(--cached-second "127.0.0.1:$second_port" --cached-second-pid "$second_pid")
if [ "$ALLOC_AB" = 1 ]; then
    DATABASE_URL="$db_url" API_ADDR="127.0.0.1:$alt_port" METRICS_ADDR="127.0.0.1:$alt_metrics_port" \
        "$OUT/openrisk-api-system-allocator" serve >"$OUT/logs/api-system-allocator.log" 2>&1 &
    alt_pid=$!
    pids+=("$alt_pid")
    wait_http "http://127.0.0.1:$alt_port/healthz" api-system-allocator
    more_api_flags+=(--cached-alt "127.0.0.1:$alt_port" --cached-alt-label "system allocator" --cached-alt-pid "$alt_pid")
fi
"$bin/ceiling" --addr "127.0.0.1:$ceiling_port" --redis-url "$REDIS_URL" --key bench:ceiling \
    --key-prefix "$OPENRISK_CACHE__KEY_PREFIX" >"$OUT/logs/ceiling.log" 2>&1 &
ceiling_pid=$!
pids+=("$ceiling_pid")
wait_http "http://127.0.0.1:$cached_port/healthz" api-cached
wait_http "http://127.0.0.1:$uncached_port/healthz" api-uncached
wait_http "http://127.0.0.1:$invalidator_port/metrics" invalidator
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$ceiling_port") 2>/dev/null && break; sleep 0.05; done

# ---- machine and build facts ---------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "profile: $PROFILE; data set: $counts; seeded in ${seed_secs}s"
    echo "knobs: TENANTS=$TENANTS RISKS=$RISKS PHASE_SECS=$PHASE_SECS ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS RATE=$RATE HOT=$HOT"
    echo "postgres: $(psql "$db_url" -AtXc 'SHOW server_version'); redis: $(redis-server --version | awk '{print $3}')"
    if [ "$CLUSTER" = 1 ]; then echo "redis cluster: 3 masters + 3 replicas on loopback, same machine; LAG_WRITES=$LAG_WRITES"; fi
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ---- measure ----------------------------------------------------------------------------------------
flags=()
if [ "$WRK" = 1 ]; then flags+=(--wrk); fi
if [ "$PERF" = 1 ] && command -v perf >/dev/null; then flags+=(--perf); fi
status=0
"$bin/openrisk-bench" \
    --cached "127.0.0.1:$cached_port" --uncached "127.0.0.1:$uncached_port" \
    --ceiling "127.0.0.1:$ceiling_port" --invalidator-metrics "127.0.0.1:$invalidator_port" \
    --cached-metrics "127.0.0.1:$cached_metrics_port" \
    --database-url "$db_url" --redis-url "$REDIS_URL" --ceiling-key bench:ceiling \
    --tokens "$OUT/tokens.txt" \
    --api-pid "$api_pid" --uncached-pid "$uncached_pid" --invalidator-pid "$invalidator_pid" \
    --redis-pid "$redis_pid" --ceiling-pid "$ceiling_pid" \
    --phase-secs "$PHASE_SECS" --rounds "$ROUNDS" --connections "$CONNECTIONS" --rate "$RATE" \
    --hot "$HOT" --fresh-risks "$FRESH_RISKS" --variants "$VARIANTS" --key-prefix "$OPENRISK_CACHE__KEY_PREFIX" --background-writes "$BACKGROUND_WRITES" --fresh-background-rate "$FRESH_BACKGROUND_RATE" \
    "${flags[@]}" "${more_api_flags[@]}" "${cluster_flags[@]}" --out "$OUT" 2>&1 | tee "$OUT/bench.log" || status=$?
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

if [ -f "$OUT/perf-hit.data" ]; then
    squeeze() { grep -v '^#' | grep -v '^$' | sed -E 's/ {2,}/ /g; s/ - - *$//' | cut -c1-160; }
    perf report -i "$OUT/perf-hit.data" --stdio --no-children --sort dso 2>/dev/null | squeeze | head -15 >"$OUT/perf-hit-dso.txt" || true
    perf report -i "$OUT/perf-hit.data" --stdio --no-children -g none --sort symbol 2>/dev/null | squeeze | head -80 >"$OUT/perf-hit-symbols.txt" || true
    log "perf profile of the cached API's hit path: $OUT/perf-hit-dso.txt, $OUT/perf-hit-symbols.txt"
fi
if [ "$COPY_PLOT" = 1 ] && [ -f "$OUT/latency.svg" ]; then
    cp "$OUT/latency.svg" "$repo/load_tests/latency.svg"
fi
exit "$status"
