#!/usr/bin/env python3
"""Checks alertmanager.yml's inhibitions on a real Alertmanager; run by check.sh.

    python3 deployment/inhibitions.py [ALERTMANAGER_BINARY]

Starts Alertmanager (Debian's `prometheus-alertmanager` unless given) on a free loopback port
with deployment/alertmanager/alertmanager.yml, fires the alerts of each case of
deployment/alertmanager/inhibitions.yml with the labels their rules give them, and compares what
its API shows suppressed with what the case expects. Also fails when an inhibit rule has no case
whose firing alerts include one of its sources, so a new rule cannot go untested. Prints what
differs and exits 1, or exits 0 silently. Needs PyYAML only.
"""

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

from validate import alert_rules

DEPLOYMENT = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(DEPLOYMENT, "alertmanager", "alertmanager.yml")
CASES = os.path.join(DEPLOYMENT, "alertmanager", "inhibitions.yml")


def rule_labels():
    """Each alert's labels as its rule sets them (severity, service), by alert name."""
    return {name: dict(rule.get("labels", {})) for name, rule in alert_rules().items()}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def wait_ready(base, process):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Alertmanager exited with {process.returncode} before it was ready")
        try:
            urllib.request.urlopen(base + "/-/ready", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("Alertmanager was not ready within 20 s")


def alert_labels(entry, case_service, labels_by_alert):
    """The full label set of one firing entry: the rule's labels, the case's service, overrides."""
    wanted = {"alertname": entry} if isinstance(entry, str) else dict(entry)
    name = wanted["alertname"]
    if name not in labels_by_alert:
        raise SystemExit(f"{CASES}: no alert rule named {name}")
    labels = {**labels_by_alert[name], "service": case_service, **wanted}
    return {key: str(value) for key, value in labels.items()}


def identity(labels):
    return tuple(sorted(labels.items()))


def describe(labels, case_service):
    """An alert's name, with the labels that set it apart within its case."""
    extra = {
        key: value
        for key, value in labels.items()
        if key not in ("alertname", "severity") and not (key == "service" and value == case_service)
    }
    return labels["alertname"] + (f" {extra}" if extra else "")


def expectations(cases, labels_by_alert, problems):
    """Every firing alert of every case with the state it must show ("active" or "suppressed")."""
    wanted = []
    for index, case in enumerate(cases, start=1):
        service = f"inhibition-case-{index}"
        firing = [alert_labels(entry, service, labels_by_alert) for entry in case["firing"]]
        suppressed = {identity(alert_labels(entry, service, labels_by_alert)) for entry in case["suppressed"]}
        for key in suppressed - {identity(labels) for labels in firing}:
            problems.append(f"{case['name']}: {describe(dict(key), service)} is expected suppressed but not fired")
        for labels in firing:
            state = "suppressed" if identity(labels) in suppressed else "active"
            wanted.append((case["name"], service, labels, state))
    return wanted


def fire(base, alerts):
    now = datetime.datetime.now(datetime.timezone.utc)
    ends = now + datetime.timedelta(hours=1)
    request(base + "/api/v2/alerts", [
        {"labels": labels, "startsAt": now.isoformat(), "endsAt": ends.isoformat()} for labels in alerts
    ])


def states(base):
    return {identity(alert["labels"]): alert["status"]["state"] for alert in request(base + "/api/v2/alerts")}


def wait_for_inhibitor(base, labels_by_alert):
    """Returns once Alertmanager's inhibitor has taken in every alert posted so far.

    The inhibitor learns of alerts from the store in the order they were posted, after the POST
    has returned. So a last pair, a source and the target it inhibits, is posted, and once that
    target shows suppressed, every earlier alert is known to the inhibitor too, and an alert that
    still shows active is one no rule inhibits (not one the inhibitor has yet to see).
    """
    source = alert_labels("OpenRiskApiDown", "inhibition-sentinel", labels_by_alert)
    target = alert_labels("OpenRiskApiLatencyHigh", "inhibition-sentinel", labels_by_alert)
    fire(base, [source, target])
    deadline = time.monotonic() + 10
    while states(base).get(identity(target)) != "suppressed":
        if time.monotonic() > deadline:
            raise SystemExit("the sentinel alert was not inhibited within 10 s (OpenRiskApiDown over OpenRiskApiLatencyHigh)")
        time.sleep(0.05)


def check_cases(base, cases, labels_by_alert, problems):
    """Fires every case's alerts at once and records each alert whose state differs."""
    wanted = expectations(cases, labels_by_alert, problems)
    fire(base, [labels for _, _, labels, _ in wanted])
    wait_for_inhibitor(base, labels_by_alert)
    shown = states(base)
    for case, service, labels, want in wanted:
        got = shown.get(identity(labels), "missing")
        if got != want:
            problems.append(f"{case}: {describe(labels, service)} is {got}, expected {want}")


def untested_rules(config, cases):
    """Inhibit rules that no case exercises: a source firing and a target expected suppressed."""

    def names(entries):
        return {entry if isinstance(entry, str) else entry["alertname"] for entry in entries}

    missing = []
    for rule in config.get("inhibit_rules", []):
        sources, targets = rule.get("source_matchers", []), rule.get("target_matchers", [])
        if not any(
            any(all(matches(m, name) for m in sources) for name in names(case["firing"]))
            and any(all(matches(m, name) for m in targets) for name in names(case["suppressed"]))
            for case in cases
        ):
            missing.append(f"inhibit rule {sources} over {targets} has no case in {CASES}")
    return missing


def matches(matcher, alertname):
    """Whether an `alertname` matcher (=, !=, =~, !~) accepts the name; other labels are ignored."""
    for op in ("=~", "!~", "!=", "="):
        if op in matcher:
            label, value = (part.strip() for part in matcher.split(op, 1))
            break
    else:
        raise SystemExit(f"{CONFIG}: cannot read matcher {matcher!r}")
    if label != "alertname":
        return True
    value = value.strip('"')
    return {
        "=": alertname == value,
        "!=": alertname != value,
        "=~": re.fullmatch(value, alertname) is not None,
        "!~": re.fullmatch(value, alertname) is None,
    }[op]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "prometheus-alertmanager"
    if shutil.which(binary) is None and not os.path.exists(binary):
        raise SystemExit(f"{binary} not found (Debian package prometheus-alertmanager)")
    with open(CONFIG) as handle:
        config = yaml.safe_load(handle)
    with open(CASES) as handle:
        cases = yaml.safe_load(handle)["cases"]
    labels_by_alert = rule_labels()
    problems = untested_rules(config, cases)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as storage:
        log_path = os.path.join(storage, "alertmanager.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={CONFIG}",
                    f"--storage.path={storage}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_ready(base, process)
            check_cases(base, cases, labels_by_alert, problems)
        except BaseException:
            with open(log_path) as log:
                sys.stderr.write("Alertmanager's log:\n" + log.read())
            raise
        finally:
            process.terminate()
            process.wait(timeout=10)
    for line in problems:
        print(line)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
