#!/usr/bin/env bash
# What invalidating one tag with N cached entries costs inside Redis, for the protocol that runs
# (replace the tag's version and rename its member set aside: the entries are unreadable at
# once, their memory is reclaimed later, 256 a command) against delete-on-write, which a hit of
# one plain GET would need (every entry of the tag deleted before the invalidation returns).
# A private Redis on a free loopback port; N entries of BODY_BYTES under one tag, registered in
# its member set; SLOWLOG's microseconds for the one command each way takes, and for the
# longest reclaim command: each of them holds Redis for every tenant on the node while it runs.
#
#   load_tests/tag_invalidation_cost.sh                      # N = 1,000 10,000 100,000, 3 rounds
#   MEMBERS="100 1000" ROUNDS=1 load_tests/tag_invalidation_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=${MEMBERS:-1000 10000 100000}
ROUNDS=${ROUNDS:-3}
BODY_BYTES=${BODY_BYTES:-1500}
CHUNK=256 # shared/src/protocol/mod.rs, RECLAIM_CHUNK

# The invalidation script exactly as the protocol runs it.
invalidate=$(sed -n '/^const INVALIDATE_SOURCE: &str = r#"$/,/^"#;$/p' shared/src/protocol/invalidation.rs | sed '1d;$d')
[ -n "$invalidate" ] || { echo "INVALIDATE_SOURCE not found in shared/src/protocol/invalidation.rs" >&2; exit 1; }
# Delete-on-write: the same version replacement, then every member deleted in the same script.
delete_on_write="redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
local members = redis.call('SMEMBERS', KEYS[2])
for i = 1, #members do redis.call('UNLINK', members[i]) end
redis.call('DEL', KEYS[2])
return #members"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
    --logfile "$dir/redis.log" --enable-debug-command local --slowlog-log-slower-than 0 --slowlog-max-len 100000
r() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do r ping >/dev/null 2>&1 && break; sleep 0.1; done
# Loaded once, so that no timing includes compiling a script.
invalidate=$(r SCRIPT LOAD "$invalidate")
delete_on_write=$(r SCRIPT LOAD "$delete_on_write")

base='or:{00000000-0000-0000-0000-000000000001}:'
version="${base}v:risks" members="${base}m:risks"
# populate N: N entries of BODY_BYTES under the tag, all in its member set, and its version.
populate() {
    r FLUSHALL >/dev/null
    r DEBUG POPULATE "$1" "${base}e2:2:list" "$BODY_BYTES" >/dev/null
    r EVAL "for i = 0, tonumber(ARGV[1]) - 1 do redis.call('SADD', KEYS[1], ARGV[2] .. ':' .. i) end" \
        1 "$members" "$1" "${base}e2:2:list" >/dev/null
    r SET "$version" 0123456789abcdef0123456789abcdef EX 3600 >/dev/null
}
# timed: the microseconds SLOWLOG gives the command that follows.
timed() {
    r SLOWLOG RESET >/dev/null
    "$@" >/dev/null
    r SLOWLOG GET 1 | sed -n 3p
}
# reclaim KEY HOW LEFT: unlinks KEY's members as protocol::reclaim does (SSCAN COUNT 256, then
# per chunk, when HOW is "ask", an SMISMEMBER against the tag's set of now and an UNLINK of the
# members it does not hold, or else an UNLINK of the whole chunk; then the key), checks that LEFT
# keys remain, and prints the longest of those commands in µs.
reclaim() {
    local cursor=0 worst=0 took asked reply chunk kept at i
    while :; do
        mapfile -t reply < <(r SSCAN "$1" "$cursor" COUNT "$CHUNK")
        cursor=${reply[0]}
        for ((at = 1; at < ${#reply[@]}; at += CHUNK)); do
            chunk=("${reply[@]:at:CHUNK}")
            asked=0
            if [ "$2" = ask ]; then
                r SLOWLOG RESET >/dev/null
                mapfile -t kept < <(r SMISMEMBER "$members" "${chunk[@]}")
                asked=$(r SLOWLOG GET 1 | sed -n 3p)
                for i in "${!chunk[@]}"; do [ "${kept[i]}" = 1 ] && unset 'chunk[i]'; done
                chunk=("${chunk[@]}")
            fi
            took=0
            [ "${#chunk[@]}" -gt 0 ] && took=$(timed r UNLINK "${chunk[@]}")
            [ "$asked" -gt "$took" ] && took=$asked
            [ "$took" -gt "$worst" ] && worst=$took
        done
        [ "$cursor" = 0 ] && break
    done
    r UNLINK "$1" >/dev/null
    [ "$(r DBSIZE)" = "$3" ] || { echo "reclaim left $(r DBSIZE) keys, not $3" >&2; exit 1; }
    echo "$worst"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; $(redis-server --version | cut -d' ' -f3); entries of $BODY_BYTES bytes; median of $ROUNDS rounds"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| entries under the tag | this protocol: invalidate, µs | its longest reclaim command, µs | without the SMISMEMBER, µs | delete-on-write, µs | ÷ this protocol |\n|---|---|---|---|---|---|\n'
for n in $MEMBERS; do
    ours="" longest="" unlinking="" deleting=""
    for _ in $(seq "$ROUNDS"); do
        populate "$n"
        ours+="$(timed r EVALSHA "$invalidate" 4 "$version" "$members" "${base}g:t1:risks" "${base}r:risks" t1 '') "
        # A tenth of the pages read again since: in the tag's new member set, kept by the reclaim.
        r EVAL "for i = 0, tonumber(ARGV[1]) - 1, 10 do redis.call('SADD', KEYS[1], ARGV[2] .. ':' .. i) end" \
            1 "$members" "$n" "${base}e2:2:list" >/dev/null
        longest+="$(reclaim "${base}g:t1:risks" ask $((2 + (n + 9) / 10))) "
        populate "$n"
        r EVALSHA "$invalidate" 4 "$version" "$members" "${base}g:t1:risks" "${base}r:risks" t1 '' >/dev/null
        unlinking+="$(reclaim "${base}g:t1:risks" unlink 1) "
        populate "$n"
        deleting+="$(timed r EVALSHA "$delete_on_write" 2 "$version" "$members" t1) "
        [ "$(r DBSIZE)" = 1 ] || { echo "delete-on-write left entries behind" >&2; exit 1; }
    done
    ours=$(median <<<"$ours") longest=$(median <<<"$longest") unlinking=$(median <<<"$unlinking")
    deleting=$(median <<<"$deleting")
    python3 -c "print(f'| {$n:,} | {$ours} | {$longest} | {$unlinking} | {$deleting:,} | {$deleting / max($ours, 1):,.1f} |')"
done
