#!/usr/bin/env bash
# Chaos smoke test (about four minutes): builds the API, the invalidator and the verifier, then
# runs `openrisk-verifier --smoke` three times, each against private servers on free ports (every
# fault of the run once, then a check of every cached entry against the database):
#   - a single Postgres and a single Redis node, each inside a network namespace of its own
#     behind a veth link (`--network`), with the short Redis blackhole added;
#   - `--replica`: a primary and a streaming replica the cached API reads its misses from;
#   - `--redis cluster`: a Redis Cluster (3 masters, 3 replicas) with the cluster's faults.
# Exits non-zero on failure; the last line of each run is "N passed, M failed". With arguments it
# runs once, with them: `verifier/smoke.sh --seed 42` replays a run, `verifier/smoke.sh --redis
# cluster --seed 42` a cluster one.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
scripts/ensure-netns-tools.sh
cargo build --quiet -p openrisk-api -p openrisk-invalidator -p openrisk-verifier
verifier="$target_dir/debug/openrisk-verifier"
if [ "$#" -gt 0 ]; then
    exec "$verifier" --smoke "$@"
fi
"$verifier" --smoke --network
"$verifier" --smoke --replica
exec "$verifier" --smoke --redis cluster
