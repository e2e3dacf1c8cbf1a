#!/usr/bin/env bash
# What one cache hit costs inside Redis, for the protocol that runs and the one it replaced,
# against a plain GET of the same body: a private Redis on a free loopback port, the same
# 3.3 KB body stored three ways, redis-benchmark sending each command in turn (interleaved
# rounds), and INFO commandstats' microseconds per call for each. Prints a table with the
# ratio to GET and the hits a second that execution time alone would allow one core (1 / µs per
# hit). Commandstats time only a command's execution, not reading, parsing and replying on the
# socket, so one Redis core serves fewer hits than that (bench.sh's /proc figure counts it all).
#
#   load_tests/redis_hit_cost.sh            # 3 rounds of 200,000 calls each
#   ROUNDS=1 CALLS=20000 load_tests/redis_hit_cost.sh
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CALLS=${CALLS:-200000}
BODY_BYTES=${BODY_BYTES:-3300}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
    --logfile "$dir/redis.log"
r() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do r ping >/dev/null 2>&1 && break; sleep 0.1; done

body=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
token=0123456789abcdef0123456789abcdef
base='or:{00000000-0000-0000-0000-000000000001}:'
# The ceiling: one plain key.
r SET plain "$body" >/dev/null
# This protocol: the entry (versions header, etag, body) and two versions, all with TTLs.
r SET "${base}v:all" "$token" EX 3600 >/dev/null
r SET "${base}v:risk:1" "$token" EX 3600 >/dev/null
printf 'all=%s risk:1=%s\n"etag"\n%s' "$token" "$token" "$body" | r -x SET "${base}e2:2:risk:1" >/dev/null
r EXPIRE "${base}e2:2:risk:1" 3600 >/dev/null
# The previous protocol: the entry as a hash, checked by its lookup script.
r HSET "${base}e:2:risk:1" b "$body" e '"etag"' t "all=$token risk:1=$token" >/dev/null
old_lookup=$(cat "$(dirname "$0")/../shared/tests/previous_protocol/lookup.lua")
sha=$(r SCRIPT LOAD "$old_lookup")
# Check that both protocols' commands really hit.
[ "$(r EVALSHA "$sha" 1 "${base}e:2:risk:1" "$base" x all risk:1 | head -1)" = hit ] || { echo "old lookup misses" >&2; exit 1; }
[ "$(r MGET "${base}e2:2:risk:1" "${base}v:all" "${base}v:risk:1" | tail -1)" = "$token" ] || { echo "MGET misses" >&2; exit 1; }

declare -A usec calls
run() {
    local name=$1 stat=$2
    shift 2
    r CONFIG RESETSTAT >/dev/null
    redis-benchmark -p "$port" -n "$CALLS" -c 32 -q "$@" >/dev/null 2>&1
    local line
    line=$(r INFO commandstats | tr -d '\r' | grep "^cmdstat_$stat:")
    usec[$name]=$(( ${usec[$name]:-0} + $(sed -E 's/^[^:]*:calls=[0-9]+,usec=([0-9]+),.*/\1/' <<<"$line") ))
    calls[$name]=$(( ${calls[$name]:-0} + $(sed -E 's/^[^:]*:calls=([0-9]+),.*/\1/' <<<"$line") ))
}
for _ in $(seq "$ROUNDS"); do
    run "GET (ceiling)" get GET plain
    run "MGET entry + 2 versions (this protocol)" mget MGET "${base}e2:2:risk:1" "${base}v:all" "${base}v:risk:1"
    run "EVALSHA lookup (previous protocol)" evalsha EVALSHA "$sha" 1 "${base}e:2:risk:1" "$base" x all risk:1
done

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; $(redis-server --version | cut -d' ' -f3); body $BODY_BYTES bytes; $ROUNDS rounds × $CALLS calls"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| command | µs per hit (commandstats) | ÷ GET | hits per second of execution time only |\n|---|---|---|---|\n'
get_cost=$(python3 -c "print(${usec["GET (ceiling)"]} / ${calls["GET (ceiling)"]})")
for name in "GET (ceiling)" "MGET entry + 2 versions (this protocol)" "EVALSHA lookup (previous protocol)"; do
    python3 -c "
cost = ${usec[$name]} / ${calls[$name]}
print(f'| $name | {cost:.3f} | {cost / $get_cost:.2f} | {1e6 / cost:,.0f} |')"
done
