"""Bookkeeping of the faults: when each alert fired and resolved, in Prometheus and at the
webhook."""

import os
import threading
import time

from common import DEPLOY, R, SUBSET, log, now
from rules import alert_rules, expected_receiver, load_yaml, seconds


class AlertWatch:
    """Per fault and alert: seconds from the fault to firing and from the recovery to resolved, in
    Prometheus and at the webhook; resolutions with long windows are awaited together at the end."""

    def __init__(self, stack):
        self.stack = stack
        self.rules = alert_rules()
        overrides = load_yaml(os.path.join(DEPLOY, "live", "for.yml"))
        self.test_for = {name: seconds(overrides[name]) for name, rule in self.rules.items() if "for" in rule}
        self.rows = []       # the table
        self.pending = []    # (row, recovered_at, deadline, why): resolutions still to see
        self.pending_lock = threading.Lock()
        self.watching = True
        threading.Thread(target=self._watch_pending, daemon=True).start()
        self.exercised = set()

    def row(self, alert, fault):
        entry = {"alert": alert, "fault": fault, "fire": None, "hook": None, "resolved": None, "hook_resolved": None,
                 "note": ""}
        self.rows.append(entry)
        self.exercised.add(alert)
        return entry

    def await_firing(self, fault, alerts, since, timeout, while_waiting=None):
        """Waits for each alert to fire in Prometheus and to reach the webhook (the receiver its
        severity routes to). `while_waiting` runs between polls (the fault's ongoing load)."""
        prom, hook = self.stack.prom, self.stack.webhook
        rows = {name: self.row(name, fault) for name in alerts}
        deadline = now() + timeout
        while now() < deadline and not all(r["fire"] and r["hook"] for r in rows.values()):
            if while_waiting:
                while_waiting()
            for name, entry in rows.items():
                if entry["fire"] is None:
                    fired = prom.fired_at(name, self.test_for.get(name, 0))
                    if fired is not None:
                        entry["fire"] = max(0.0, fired - since)
                if entry["hook"] is None:
                    arrived = hook.first(name, "firing", since)
                    if arrived:
                        entry["hook"] = arrived[0] - since
                        entry["receiver"] = arrived[1]
            time.sleep(0.25)
        for name, entry in rows.items():
            R.check(f"{fault}: {name} fires in Prometheus", entry["fire"] is not None, f"after {timeout}s: "
                    f"{prom.state(name)}")
            receiver = expected_receiver(self.rules[name]["labels"]["severity"])
            R.check(f"{fault}: {name} reaches the webhook through Alertmanager ({receiver})",
                    entry["hook"] is not None and entry.get("receiver") == receiver,
                    f"receiver {entry.get('receiver')}")
        return rows

    def cycle(self, fault, alerts, inject, recover, while_down=None):
        """The common course of a fault: inject it, wait for `alerts` to fire, run the checks of
        `while_down`, recover, wait for the alerts to resolve."""
        log(f"fault: {fault}")
        since = now()
        inject()
        rows = self.await_firing(fault, alerts, since, 30)
        if while_down:
            while_down()
        recovered = now()
        recover()
        self.await_resolved(rows, recovered, 30)

    def await_resolved(self, rows, recovered_at, timeout, later=False, why=""):
        """Waits until each alert is inactive in Prometheus and its resolution reached the webhook.
        With `later`, only notes them: the final phase waits for all of them together."""
        if later:
            with self.pending_lock:
                for entry in rows.values():
                    entry["since"] = recovered_at
                    self.pending.append((entry, recovered_at, now() + timeout, why))
            return
        for entry in rows.values():
            entry["since"] = recovered_at
        deadline = now() + timeout
        while now() < deadline:
            open_entries = [e for e in rows.values() if e["resolved"] is None or e["hook_resolved"] is None]
            if not open_entries:
                break
            for entry in open_entries:
                self._poll_once(entry)
            time.sleep(0.25)
        for entry in rows.values():
            self._report(entry, why)

    def _watch_pending(self):
        """Notes when pending resolutions happen while the other faults run."""
        while self.watching:
            with self.pending_lock:
                entries = [entry for entry, _, _, _ in self.pending]
            for entry in entries:
                if entry["resolved"] is None or entry["hook_resolved"] is None:
                    try:
                        self._poll_once(entry)
                    except Exception:  # noqa: BLE001 - Prometheus may be briefly busy; try again
                        pass
            time.sleep(0.5)

    def _poll_once(self, entry):
        """Notes the alert's resolution, in Prometheus and at the webhook, if it happened since
        `entry["since"]` (the recovery)."""
        since = entry["since"]
        if entry["resolved"] is None and self.stack.prom.state(entry["alert"]) == "inactive":
            entry["resolved"] = now() - since
        if entry["hook_resolved"] is None:
            arrived = self.stack.webhook.first(entry["alert"], "resolved", since)
            if arrived:
                entry["hook_resolved"] = arrived[0] - since

    def _report(self, entry, why=""):
        fault = entry["fault"]
        R.check(f"{fault}: {entry['alert']} resolves in Prometheus after recovery", entry["resolved"] is not None,
                why)
        R.check(f"{fault}: {entry['alert']} resolution reaches the webhook", entry["hook_resolved"] is not None, why)

    def resolve_in_full_run(self, rows, recovered_at, timeout, why):
        """Resolutions that take minutes: awaited at the end of a full run, skipped in the CI subset."""
        if SUBSET == "full":
            self.await_resolved(rows, recovered_at, timeout, later=True, why=why)
        else:
            self.skip_resolution(rows, "not awaited in LIVE_SUBSET=ci: " + why)

    def skip_resolution(self, rows, why):
        for entry in rows.values():
            entry["note"] = why
            R.skip(f"{entry['fault']}: {entry['alert']} resolution", why)

    def finish_pending(self):
        if not self.pending:
            return
        longest = max(deadline for _, _, deadline, _ in self.pending) - now()
        log(f"waiting up to {longest:.0f}s for {len(self.pending)} resolution(s) whose alert windows are long")
        deadline = max(deadline for _, _, deadline, _ in self.pending)
        while now() < deadline and any(e["resolved"] is None or e["hook_resolved"] is None
                                       for e, _, _, _ in self.pending):
            time.sleep(0.5)
        self.watching = False
        for entry, _, _, why in self.pending:
            self._report(entry, why)
        self.pending.clear()
