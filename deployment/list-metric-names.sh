#!/usr/bin/env bash
# Prints every openrisk_* metric that the Prometheus rules and the Grafana dashboard query, one
# base name a line (histogram _bucket/_sum/_count folded into the histogram's name), sorted.
#
#   deployment/list-metric-names.sh            # print
#   deployment/list-metric-names.sh --write    # regenerate deployment/metric_names.txt
#   deployment/list-metric-names.sh --check    # exit 1 when metric_names.txt is out of date
#
# Recording-rule names (openrisk:..., route:openrisk_...:...) are not exported metrics and are
# left out; only names that the binaries themselves must export are listed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

generate() {
    "$python" - "$here" <<'PY'
import glob, json, os, re, sys
import yaml

root = sys.argv[1]
exprs = []
for path in sorted(glob.glob(os.path.join(root, "prometheus", "rules", "*.yml"))):
    for group in (yaml.safe_load(open(path)) or {}).get("groups", []):
        exprs += [rule["expr"] for rule in group.get("rules", [])]

def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)

for path in sorted(glob.glob(os.path.join(root, "grafana", "dashboards", "*.json"))):
    walk(json.load(open(path)))

# A metric name not glued to a recording rule's colons.
name = re.compile(r"(?<![\w:])(openrisk_[A-Za-z0-9_]+)(?![\w:])")
names = set()
for expr in exprs:
    for found in name.findall(expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", found))
print("\n".join(sorted(names)))
PY
}

case "${1:-}" in
    "") generate ;;
    --write) generate > "$here/metric_names.txt" ;;
    --check)
        if ! diff -u "$here/metric_names.txt" <(generate); then
            echo "deployment/metric_names.txt is out of date: run deployment/list-metric-names.sh --write" >&2
            exit 1
        fi ;;
    *) echo "usage: $0 [--write|--check]" >&2; exit 2 ;;
esac
