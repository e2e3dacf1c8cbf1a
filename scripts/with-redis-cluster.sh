#!/usr/bin/env bash
# Runs a command with TEST_REDIS_URL pointing at a private Redis Cluster (3 masters, 3 replicas
# on free loopback ports), started for this one command and torn down after it, even when the
# command fails or this script is killed (the cluster stops when its standard input closes).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p openrisk-test-support --bin openrisk-test-cluster
coproc CLUSTER { exec "${CARGO_TARGET_DIR:-target}/debug/openrisk-test-cluster"; }
if ! read -r -t 120 url <&"${CLUSTER[0]}"; then
    echo "the private Redis Cluster did not start" >&2
    exit 1
fi
status=0
TEST_REDIS_URL="$url" "$@" || status=$?
input=${CLUSTER[1]}
exec {input}>&-
wait "$CLUSTER_PID" 2>/dev/null || true
exit "$status"
