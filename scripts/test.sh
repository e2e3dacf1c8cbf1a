#!/usr/bin/env bash
# Runs every test against the local PostgreSQL and Redis (each test gets its own database and
# Redis namespace), then the API, invalidator and protocol suites again against a private Redis
# Cluster. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
scripts/ensure-netns-tools.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    # Pinned: a newer release may need a newer Rust than the machine's.
    cargo install --locked cargo-nextest@0.9.143
fi
cargo nextest run --workspace "$@"
# The API, invalidator and protocol suites once more, on a private Redis Cluster (less the
# tests that bring servers of their own, which gain nothing from a second run).
scripts/with-redis-cluster.sh cargo nextest run --workspace \
    -E '(package(openrisk-api) | package(openrisk-invalidator) | (package(openrisk-shared) & binary(protocol)))
        & !binary(redis_failover) & !binary(shard_down) & !binary(redis_down) & !binary(network_faults) & !binary(openapi)
        & !binary(replicas) & !binary(resharding)' "$@"
