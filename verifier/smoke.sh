#!/usr/bin/env bash
# Chaos smoke test (about a minute): builds the API, the invalidator and the verifier, then runs
# `openrisk-verifier --smoke` against a private Postgres and Redis it starts on free ports (every
# fault once, then a check of every cached entry against the database).
# Exits non-zero on failure; the last line is "N passed, M failed". Extra arguments go to the
# verifier, e.g. `verifier/smoke.sh --seed 42` replays a run and `verifier/smoke.sh --redis cluster`
# runs on a private Redis Cluster (3 masters, 3 replicas) with the cluster's faults.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet -p openrisk-api -p openrisk-invalidator -p openrisk-verifier
exec "$target_dir/debug/openrisk-verifier" --smoke "$@"
