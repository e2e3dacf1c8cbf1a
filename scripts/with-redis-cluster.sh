#!/usr/bin/env bash
# Runs a command with TEST_REDIS_URL pointing at a private Redis Cluster (3 masters, 3 replicas
# on free loopback ports), started for this one command and torn down after it, even when the
# command fails or this script is killed (the cluster stops when its standard input closes).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p openrisk-test-support --bin openrisk-test-cluster
coproc CLUSTER { exec "${CARGO_TARGET_DIR:-target}/debug/openrisk-test-cluster"; }
# Bash unsets the coproc's variables once it exits: copies keep them usable under `set -u`.
# shellcheck disable=SC2153 # CLUSTER_PID is set by `coproc`.
cluster_out=${CLUSTER[0]} cluster_in=${CLUSTER[1]} cluster_pid=$CLUSTER_PID
if ! read -r -t 120 url <&"$cluster_out"; then
    echo "the private Redis Cluster did not start" >&2
    exit 1
fi
status=0
TEST_REDIS_URL="$url" "$@" || status=$?
exec {cluster_in}>&-
wait "$cluster_pid" 2>/dev/null || true
exit "$status"
