#!/usr/bin/env bash
# The committed openapi/openapi.json against the client generators API consumers use
# (docs/clients.md): openapi-spec-validator and Redocly's linter must find no error;
# openapi-python-client, openapi-generator (python) and openapi-typescript must generate every
# operation and schema; then one scenario per client (openapi/scenarios/) runs against the API on a
# free port, on a fresh database (on the local PostgreSQL) and a private Redis, with an admin token.
# Tools are pinned (openapi/scenarios/requirements.txt, package-lock.json) and installed under
# ~/.cache/openrisk-clients; generated code goes to $CARGO_TARGET_DIR/clients/generated, never the
# repository. Under a minute with warm caches. The last line is "N passed, M failed"; any failure
# exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scenarios="$root/openapi/scenarios"
spec="$root/openapi/openapi.json"

# Pinned tools, each set in a directory named after the hash of its pins (a new pin, a new directory).
cache="$HOME/.cache/openrisk-clients"
venv="$cache/venv-$(sha256sum "$scenarios/requirements.txt" | cut -c1-16)"
if [ ! -f "$venv/.installed" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$scenarios/requirements.txt"
    touch "$venv/.installed"
fi
npm_dir="$cache/npm-$(cat "$scenarios/package.json" "$scenarios/package-lock.json" | sha256sum | cut -c1-16)"
if [ ! -f "$npm_dir/.installed" ]; then
    rm -rf "$npm_dir"
    mkdir -p "$npm_dir"
    cp "$scenarios/package.json" "$scenarios/package-lock.json" "$npm_dir/"
    (cd "$npm_dir" && npm ci --silent --no-audit --no-fund >/dev/null)
    touch "$npm_dir/.installed"
fi
# openapi-generator-cli runs its bundled jar.
if ! command -v java >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
# The pinned tools first on PATH (openapi-python-client also finds ruff there, to format its output).
export PATH="$venv/bin:$npm_dir/node_modules/.bin:$PATH"
# The scenarios import openapi/scenarios/scenario.py: keep the tree free of __pycache__.
export PYTHONDONTWRITEBYTECODE=1
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1

source scripts/test-api.sh

report_dir="$target_dir/clients"
generated="$report_dir/generated"
rm -rf "$report_dir"
mkdir -p "$generated"
work="$(mktemp -d)"
cleanup() {
    stop_test_api
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
# check NAME COMMAND...: runs COMMAND with its output in $report_dir/NAME.log and counts the result;
# on failure shows the end of the log.
check() {
    local name="$1" started=$SECONDS
    shift
    if "$@" >"$report_dir/$name.log" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $name ($((SECONDS - started))s)"
    else
        failed=$((failed + 1))
        echo "FAIL $name ($((SECONDS - started))s); the end of $report_dir/$name.log:"
        tail -n 40 "$report_dir/$name.log" | sed 's/^/    /'
    fi
}

# The document itself.
check validate openapi-spec-validator "$spec"
check lint redocly lint --config "$root/openapi/redocly.yaml" --format=summary "$spec"
grep -E '^(error|warning) ' "$report_dir/lint.log" | sed 's/^/    lint: /' || true

# The three clients, and every operation and schema in each.
python_client="$generated/openapi-python-client"
generate_python_client() {
    local output
    output="$(openapi-python-client generate --path "$spec" --meta none \
        --output-path "$python_client/openrisk_client" 2>&1)" || { echo "$output"; return 1; }
    echo "$output"
    # It skips what it cannot parse with a warning and still succeeds: a warning is a failure here.
    ! grep -q "Warning" <<<"$output"
}
check generate-openapi-python-client generate_python_client
openapi_generator="$generated/openapi-generator"
check generate-openapi-generator openapi-generator-cli generate --input-spec "$spec" --generator-name python \
    --output "$openapi_generator" --package-name openrisk_ogen \
    --global-property apiTests=false,modelTests=false,apiDocs=false,modelDocs=false
typescript="$generated/openapi-typescript"
mkdir -p "$typescript"
cp "$scenarios/typescript.ts" "$scenarios/tsconfig.json" "$scenarios/package.json" "$typescript/"
ln -s "$npm_dir/node_modules" "$typescript/node_modules"
# --default-non-nullable=false: fields with a default stay optional in request bodies (by default
# openapi-typescript makes them required, so a RiskCreate would need every defaulted field).
check generate-openapi-typescript openapi-typescript "$spec" --default-non-nullable=false \
    --output "$typescript/openrisk.d.ts"
for generator in openapi-python-client openapi-generator openapi-typescript; do
    case "$generator" in
        openapi-python-client) client="$python_client/openrisk_client" ;;
        openapi-generator) client="$openapi_generator/openrisk_ogen" ;;
        openapi-typescript) client="$typescript/openrisk.d.ts" ;;
    esac
    check "operations-$generator" "$venv/bin/python" "$scenarios/check_operations.py" "$spec" "$generator" "$client"
done
check typecheck-typescript tsc --noEmit --project "$typescript"

# The API, started as verifier/schemathesis.sh starts it.
start_test_api clients "$report_dir/api.log"
run_id="$(date +%s)-$$"
# Not OPENRISK_*: both binaries read every such variable as a setting and refuse unknown ones.
export SCENARIO_BASE_URL="http://$API_ADDR" SCENARIO_TOKEN="$token" SCENARIO_RUN_ID="$run_id"

# One scenario per client.
check scenario-openapi-python-client env PYTHONPATH="$scenarios:$python_client" \
    timeout 120 "$venv/bin/python" "$scenarios/python_client.py"
check scenario-openapi-generator env PYTHONPATH="$scenarios:$openapi_generator" \
    timeout 120 "$venv/bin/python" "$scenarios/openapi_generator.py"
run_typescript() {
    tsc --project "$typescript" && timeout 120 node "$typescript/out/typescript.js"
}
check scenario-openapi-typescript run_typescript

stop_test_api_server
if grep -q "panicked" "$report_dir/api.log"; then
    echo "FAIL the API panicked:"
    grep -B2 -A10 "panicked" "$report_dir/api.log" | head -40 | sed 's/^/    /'
    failed=$((failed + 1))
fi
echo "logs and generated clients: $report_dir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
