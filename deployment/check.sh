#!/usr/bin/env bash
# Validates everything under deployment/: Prometheus config, rules and their unit tests,
# Alertmanager config and its inhibitions (on a real Alertmanager), the compose file, the
# Kubernetes manifests, the Grafana dashboard and the generated metric name list. Installs the
# tools it lacks (Debian packages, and one PyPI package in a virtualenv under ~/.cache), so it
# runs as root on a fresh Debian 12 machine.
#
#   deployment/check.sh            # ends with "N passed, M failed" and exits non-zero on failure
#   VERBOSE=1 deployment/check.sh  # also prints the output of passing checks
#
# Environment: K8S_VERSION (schema version for the manifests, default 1.30.0),
# DEPLOY_TOOLS_DIR (where the virtualenv lives; no OPENRISK_ prefix, which the binaries would read
# as a setting and refuse).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

K8S_VERSION="${K8S_VERSION:-1.30.0}"
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/openrisk-deploy}"
VERBOSE="${VERBOSE:-0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
skipped=0

indent() {
    local line
    while IFS= read -r line; do printf '      %s\n' "$line"; done <<<"$1"
}

# check NAME COMMAND...: runs one check, counts it, shows its output when it fails.
check() {
    local name=$1 output status
    shift
    output="$("$@" 2>&1)"
    status=$?
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        echo "PASS  $name"
        if [ "$VERBOSE" = 1 ] && [ -n "$output" ]; then indent "$output"; fi
    else
        failed=$((failed + 1))
        echo "FAIL  $name (exit $status)"
        indent "$output"
    fi
}

skip() {
    skipped=$((skipped + 1))
    echo "SKIP  $1"
}

# ------------------------------------------------------------------ tools

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "check.sh: need root to install $*" >&2
        return 1
    fi
    # Packages such as prometheus start a daemon on install; a policy-rc.d that says no keeps
    # this a pure tool install (only when the machine has none of its own).
    local policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    local status=0
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -qq || status=$?
        apt_updated=1
    fi
    if [ "$status" -eq 0 ]; then
        local log
        log="$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" 2>&1)" || {
            status=$?
            echo "$log" >&2
        }
    fi
    if [ "$policy_created" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    return "$status"
}

echo "== tools"
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
PY=python3
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    missing+=(python3 python3-yaml)
    PY=/usr/bin/python3
fi
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    # No Compose v2 plugin here: Debian's docker-compose validates the same file.
    missing+=(docker-compose)
    COMPOSE=(docker-compose)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}" || echo "check.sh: installing ${missing[*]} failed" >&2
fi

# kubernetes-validate (PyPI): the Kubernetes OpenAPI schemas ship inside the package, so it
# validates offline. Installed once into a virtualenv.
KV="$TOOLS/venv/bin/kubernetes-validate"
if ! "$KV" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
    echo "installing: kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $TOOLS/venv"
    mkdir -p "$TOOLS"
    if ! "$PY" -m venv --clear "$TOOLS/venv" >/dev/null 2>&1; then
        apt_install python3-venv && /usr/bin/python3 -m venv --clear "$TOOLS/venv" >/dev/null
    fi
    "$TOOLS/venv/bin/pip" install --disable-pip-version-check -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
        echo "check.sh: installing kubernetes-validate failed" >&2
fi
echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "amtool: $(amtool --version 2>&1 | head -n1)"
echo "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version 2>&1 | head -n1))"
echo "kubernetes-validate: $("$KV" --version 2>&1), schemas for Kubernetes $K8S_VERSION"

# ------------------------------------------------------------------ Prometheus and Alertmanager
echo "== prometheus and alertmanager"
check "promtool check config prometheus.yml" promtool check config deployment/prometheus/prometheus.yml
check "promtool check rules" promtool check rules deployment/prometheus/rules/*.yml
check "promtool test rules (every alert firing and quiet)" promtool test rules deployment/prometheus/tests/*.yml
check "alerts: severity, annotations, runbook anchors, tests for each" "$PY" deployment/validate.py alerts
check "amtool check-config alertmanager.yml" amtool check-config deployment/alertmanager/alertmanager.yml
check "alertmanager inhibitions on a real Alertmanager (alertmanager/inhibitions.yml)" \
    "$PY" deployment/inhibitions.py

# ------------------------------------------------------------------ compose and images
echo "== compose"
check "${COMPOSE[*]} config -q" "${COMPOSE[@]}" -f deployment/docker-compose.yml config -q
check "${COMPOSE[*]} config -q with the Redis Cluster variant" \
    "${COMPOSE[@]}" -f deployment/docker-compose.yml -f deployment/docker-compose.cluster.yml config -q
check "compose: services, migrate gating, scalable invalidator, Redis policy, env keys" "$PY" deployment/validate.py compose
check "Dockerfile: targets, non-root user, healthchecks, .dockerignore" "$PY" deployment/validate.py docker

# ------------------------------------------------------------------ Kubernetes
echo "== kubernetes"
# Every manifest with a schema (the ServiceMonitor is a CRD and kustomization.yaml a kustomize
# file: validate.py checks those).
manifests=()
for name in namespace configmap secret.example migrate-job api invalidator; do
    manifests+=("deployment/k8s/$name.yaml")
done
check "kubernetes-validate --strict (Kubernetes $K8S_VERSION)" \
    "$KV" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
if command -v kubectl >/dev/null 2>&1; then
    render_and_validate() {
        kubectl kustomize deployment/k8s >"$work/rendered.yaml" &&
            "$KV" --strict --quiet -k "$K8S_VERSION" "$work/rendered.yaml"
    }
    check "kubectl kustomize deployment/k8s, rendered output validated" render_and_validate
else
    skip "kubectl kustomize (kubectl not installed; the manifests are still validated one by one)"
fi
check "k8s: probes, replicas, PDB, secrets, selectors, scrape targets, env keys" "$PY" deployment/validate.py k8s

# ------------------------------------------------------------------ Grafana and metric names
echo "== grafana and metric names"
check "dashboard JSON shape and required panels" "$PY" deployment/validate.py dashboard
dashboard_promql() {
    "$PY" deployment/validate.py dashboard-promql-rules "$work/dashboard-rules.yml" &&
        promtool check rules "$work/dashboard-rules.yml"
}
check "dashboard PromQL parses (promtool)" dashboard_promql
check "metric_names.txt up to date" env PYTHON="$PY" deployment/list-metric-names.sh --check
check "shellcheck" shellcheck deployment/check.sh deployment/list-metric-names.sh deployment/live.sh
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
check "shellcheck warnings in every script of the repository" shellcheck -S warning "${scripts[@]}"

echo
echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
