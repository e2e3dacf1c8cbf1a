#!/usr/bin/env bash
# Chaos smoke test (about two minutes): builds the API, the invalidator and the verifier, then runs
# `openrisk-verifier --smoke` against a private Postgres and Redis it starts on free ports (every
# fault once, then a check of every cached entry against the database), and `--smoke --replica`
# with a private primary and streaming replica the cached API reads its misses from.
# Exits non-zero on failure; the last line is "N passed, M failed". Extra arguments go to the
# verifier, e.g. `verifier/smoke.sh --seed 42` replays a run.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet -p openrisk-api -p openrisk-invalidator -p openrisk-verifier
"$target_dir/debug/openrisk-verifier" --smoke "$@"
# Then with a streaming read replica (about 50 s more): replay paused with a Redis flush, the
# replica restarted.
exec "$target_dir/debug/openrisk-verifier" --smoke --replica "$@"
