"""The project's Prometheus, Alertmanager and Grafana files, read and rewritten for the live test."""

import glob
import json
import os

import yaml

from common import DEPLOY


# What Grafana's variables stand for in the panel queries (longer than Grafana's own at a 1 s
# scrape interval, so that a rate covers several rounds of the test's traffic).
RATE_INTERVAL = "1m"
PANEL_VARIABLES = {"$__rate_interval": RATE_INTERVAL, "${__rate_interval}": RATE_INTERVAL,
                   "$__interval": "15s", "${__interval}": "15s", "$__range": "5m", "${__range}": "5m"}


def load_yaml(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def write_yaml(path, data):
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)


def alert_rules():
    rules = {}
    for group in load_yaml(os.path.join(DEPLOY, "prometheus", "rules", "alerts.yml"))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules[rule["alert"]] = rule
    return rules


def recording_rules():
    names = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "prometheus", "rules", "*.yml"))):
        for group in load_yaml(path)["groups"]:
            names += [rule["record"] for rule in group["rules"] if "record" in rule]
    return names


def without_for(rules):
    """A rule file's content with the alerts' `for:` left out."""
    def rule_without_for(rule):
        return {key: value for key, value in rule.items() if not ("alert" in rule and key == "for")}
    return {**rules, "groups": [{**group, "rules": [rule_without_for(rule) for rule in group["rules"]]}
                                for group in rules["groups"]]}


def write_rules(out_dir):
    """Copies the rule files, replacing only the `for:` of alerts (deployment/live/for.yml)."""
    overrides = load_yaml(os.path.join(DEPLOY, "live", "for.yml"))
    os.makedirs(out_dir)
    problems = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "prometheus", "rules", "*.yml"))):
        rules = load_yaml(path)
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "alert" in rule and "for" in rule:
                    if rule["alert"] not in overrides:
                        problems.append(f"{rule['alert']} has a for: but no entry in deployment/live/for.yml")
                    else:
                        rule["for"] = overrides[rule["alert"]]
        copy = os.path.join(out_dir, os.path.basename(path))
        write_yaml(copy, rules)
        # The copy Prometheus will load, read back, against the project's file read afresh.
        written, original = without_for(load_yaml(copy)), without_for(load_yaml(path))
        if written != original:
            changed = [rule.get("alert") or rule.get("record")
                       for group, before in zip(written["groups"], original["groups"])
                       for rule, old in zip(group["rules"], before["rules"]) if rule != old]
            problems.append(f"the copy of {os.path.basename(path)} differs from it beyond for: "
                            f"({', '.join(changed) or 'groups or rules added, removed or renamed'})")
    rules = alert_rules()
    problems += [f"for.yml names {name}, which no rule defines" for name in overrides if name not in rules]
    durations = {name: (seconds(rule["for"]), seconds(overrides[name])) for name, rule in rules.items()
                 if "for" in rule and name in overrides}
    for a, (prod_a, test_a) in durations.items():
        for b, (prod_b, test_b) in durations.items():
            if prod_a < prod_b and not test_a < test_b:
                problems.append(f"for.yml: {a} must stay shorter than {b}, as in production")
    return problems


def seconds(duration):
    """A Prometheus duration such as 90s, 5m or 1h30m in seconds."""
    total, number = 0, ""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = str(duration)
    index = 0
    while index < len(text):
        if text[index].isdigit():
            number += text[index]
            index += 1
            continue
        unit = "ms" if text.startswith("ms", index) else text[index]
        total += int(number) * units[unit]
        number = ""
        index += len(unit)
    return total


def write_prometheus_config(path, rules_dir, targets, alertmanager_port, exporters):
    """prometheus.yml with `targets` (by job) in place of its discovery. A job scraped through an
    exporter's multi-target endpoint (a relabelling that sets __address__ outright) has the
    exporter's address from `exporters` in place of the compose service's."""
    config = load_yaml(os.path.join(DEPLOY, "prometheus", "prometheus.yml"))
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [os.path.join(rules_dir, "*.yml")]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            raise RuntimeError(f"prometheus.yml has job {name}; give it a loopback target in deployment/live/stack.py")
        for key in list(job):
            if key.endswith("_sd_configs") or key in ("static_configs", "scrape_interval", "scrape_timeout"):
                del job[key]
        job["static_configs"] = [{"targets": targets[name]}]
        exporter_rules = [rule for rule in job.get("relabel_configs", [])
                          if rule.get("target_label") == "__address__" and "source_labels" not in rule]
        if bool(exporter_rules) != (name in exporters):
            raise RuntimeError(f"prometheus.yml job {name}: deployment/live/stack.py must give an exporter address "
                               "exactly for the jobs scraped through one")
        for rule in exporter_rules:
            rule["replacement"] = exporters[name]
    missing = set(targets) - {job["job_name"] for job in config["scrape_configs"]}
    if missing:
        raise RuntimeError(f"prometheus.yml lacks the jobs {sorted(missing)}")
    write_yaml(path, config)


def write_alertmanager_config(path, webhook_port):
    config = load_yaml(os.path.join(DEPLOY, "alertmanager", "alertmanager.yml"))

    def shorten(route, top):
        for key in ("group_wait", "group_interval"):
            if top or key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child, False)

    shorten(config["route"], True)
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": f"http://127.0.0.1:{webhook_port}/{receiver['name']}",
                                        "send_resolved": True}]
    write_yaml(path, config)


def expected_receiver(severity):
    config = load_yaml(os.path.join(DEPLOY, "alertmanager", "alertmanager.yml"))
    for route in config["route"].get("routes", []):
        for matcher in route.get("matchers", []):
            label, _, value = (part.strip().strip('"') for part in matcher.partition("="))
            if label == "severity" and value == severity:
                return route["receiver"]
    return config["route"]["receiver"]


def dashboard_queries():
    with open(os.path.join(DEPLOY, "grafana", "dashboards", "openrisk.json")) as handle:
        dashboard = json.load(handle)
    for panel in dashboard["panels"]:
        for inner in [panel] + panel.get("panels", []):
            if inner.get("type") == "row":
                continue
            for target in inner.get("targets", []):
                expr = target["expr"]
                for variable, value in PANEL_VARIABLES.items():
                    expr = expr.replace(variable, value)
                yield inner["title"], target.get("refId", "?"), expr
