#!/usr/bin/env bash
# Monitoring proven live: a real Prometheus and Alertmanager watching the real processes.
#
#   deployment/live.sh                  # every fault and its alerts (about 16 minutes: waits for
#                                       # the 15-minute window of OpenRiskInvalidatorPoisonEvents)
#   LIVE_SUBSET=ci deployment/live.sh   # the subset CI runs (about 3 minutes with start-up)
#   VERBOSE=1 deployment/live.sh        # also details of passing checks and example log lines
#
# Installs what it lacks (Debian's prometheus, prometheus-alertmanager, prometheus-redis-exporter,
# prometheus-postgres-exporter and python3-yaml; their services are kept from starting), builds the
# API and the invalidator, then runs deployment/live/driver.py: private PostgreSQL (with a
# streaming replica the API reads from) and Redis, the API, two invalidators, both exporters,
# Alertmanager and Prometheus on free loopback ports, with the project's own configuration (see
# live/rules.py for what is rewritten). Ends with "N passed, M failed" and exits non-zero on failure;
# every process it started is stopped on exit.
# Logs: $CARGO_TARGET_DIR/live/logs (or target/live/logs).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || packages+=(prometheus-alertmanager)
command -v prometheus-redis-exporter >/dev/null 2>&1 || packages+=(prometheus-redis-exporter)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || packages+=(prometheus-postgres-exporter)
PY=python3
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    packages+=(python3-yaml)
    PY=/usr/bin/python3
fi
if [ "${#packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "live.sh: need root to install ${packages[*]}" >&2
        exit 1
    fi
    echo "installing: ${packages[*]}"
    # The packages start their daemons on the default ports on install; a policy-rc.d that says
    # no keeps them stopped (only when the machine has none of its own). Every server this test
    # needs it starts itself, on free ports.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    status=0
    apt-get update -qq || status=$?
    if [ "$status" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" \
            >/tmp/openrisk-live-apt.log 2>&1 || { status=$?; cat /tmp/openrisk-live-apt.log >&2; }
    fi
    if [ "$policy_created" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$status" -eq 0 ] || exit "$status"
    # Should a service manager have started one anyway, stop it: the test owns no default port.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        for unit in prometheus prometheus-alertmanager prometheus-redis-exporter prometheus-postgres-exporter; do
            systemctl stop "$unit" >/dev/null 2>&1 || true
        done
    fi
fi
for tool in redis-server redis-cli psql; do
    command -v "$tool" >/dev/null 2>&1 || { echo "live.sh: $tool is required" >&2; exit 1; }
done

cargo build --quiet -p openrisk-api -p openrisk-invalidator
# A copy of the binaries just built: another checkout sharing CARGO_TARGET_DIR may rebuild them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export LIVE_BIN_DIR="$CARGO_TARGET_DIR/live-bin"
mkdir -p "$LIVE_BIN_DIR"
cp "$CARGO_TARGET_DIR/debug/openrisk-api" "$CARGO_TARGET_DIR/debug/openrisk-invalidator" "$LIVE_BIN_DIR/"
exec "$PY" deployment/live/driver.py
