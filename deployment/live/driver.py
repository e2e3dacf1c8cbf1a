#!/usr/bin/env python3
"""The live monitoring test; run it through deployment/live.sh, which installs the servers and
builds the binaries first.

Starts, on free loopback ports and in a scratch directory: a private PostgreSQL with a streaming
replica (the API reads misses from it) and Redis, the API, two invalidator replicas, Debian's Redis
and Postgres exporters, an Alertmanager with the project's alertmanager.yml (receivers pointed at a
webhook served here, notification timings shortened) and a Prometheus with the project's
prometheus.yml (targets and intervals rewritten), recording rules and alert rules (only the `for:`
durations replaced, from deployment/live/for.yml). Then it drives reads and writes through the API
and through SQL, checks through Prometheus's HTTP API that every recording rule and every Grafana
panel query has data that agrees with what it did, injects faults, and watches each expected alert
fire in Prometheus, reach the webhook through Alertmanager and resolve after recovery. It prints a
table of the timings and ends with "N passed, M failed".

Environment: LIVE_SUBSET=ci|full (default full), LIVE_BIN_DIR (the binaries; default
$CARGO_TARGET_DIR/debug), LIVE_REPORT_DIR (logs; default $CARGO_TARGET_DIR/live), PG_BIN_DIR,
VERBOSE=1.
Needs Python 3.9+ and PyYAML only.
"""


import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

from common import LOGS, R, REPORT, SUBSET, VERBOSE, now
from faults import PLANS, Faults
from phases import check_logs, check_series, check_values, warm_up
from processes import cleanup
from stack import Stack
from workload import Workload

def print_table(faults):
    def seconds(value):
        return "—" if value is None else f"{value:.1f}"

    header = ["alert", "fault", "firing (s)", "at webhook (s)", "resolved (s)", "resolved at webhook (s)"]
    lines = [[e["alert"], e["fault"], seconds(e["fire"]), seconds(e["hook"]), seconds(e["resolved"]),
              seconds(e["hook_resolved"])] for e in faults.rows]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    print()
    print("Seconds from the fault to firing, and from the recovery to resolved ("
          "Prometheus, then the webhook behind Alertmanager):")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
    notes = [f"  {e['alert']} ({e['fault']}): {e['note']}" for e in faults.rows if e["note"]]
    if notes:
        print("\n".join(["not awaited:"] + notes))
    missing = sorted(set(faults.rules) - faults.exercised)
    if missing:
        print(f"alerts not exercised in LIVE_SUBSET={SUBSET}: {', '.join(missing)}")


def main():
    if SUBSET not in PLANS:
        raise SystemExit(f"LIVE_SUBSET must be one of {sorted(PLANS)}")
    shutil.rmtree(REPORT, ignore_errors=True)
    os.makedirs(LOGS)
    work = tempfile.mkdtemp(prefix="openrisk-live-")
    os.chmod(work, 0o755)
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))

    started = now()
    stack = Stack(work)
    faults = None
    try:
        stack.start()
        risks = stack.pg.sql(f"SELECT id FROM risks WHERE tenant_id = '{stack.tenant}' AND deleted_at IS NULL "
                             f"ORDER BY id").split()
        assets = stack.pg.sql(f"SELECT id FROM assets WHERE tenant_id = '{stack.tenant}' ORDER BY id").split()
        stack.workload = Workload(stack.api_client, stack.pg, stack.tenant, risks, assets, stack.bulk_tenant)
        warm_up(stack, stack.workload)
        stack.prom.wait_scraped()
        with stack.api_client.lock:
            stack.steady_from = (now(), dict(stack.api_client.cache))
        threading.Thread(target=stack.workload.steady, daemon=True).start()
        time.sleep(8)
        check_series(stack)
        check_logs(stack)
        check_values(stack)
        faults = Faults(stack)
        for name in PLANS[SUBSET]:
            getattr(faults, name)()
        faults.finish_pending()
    except Exception as error:  # noqa: BLE001 - report, clean up, fail
        import traceback
        traceback.print_exc()
        R.check("the live test ran to the end", False, str(error))
    finally:
        if getattr(stack, "workload", None):
            stack.workload.stopped.set()
    if faults:
        print_table(faults)
    for label, line in (("request", getattr(stack, "example_request_line", None)),
                        ("batch", getattr(stack, "example_batch_line", None))):
        if line and VERBOSE:
            print(f"example {label} log line: {json.dumps(line)}")
    print(f"runtime {now() - started:.0f}s (LIVE_SUBSET={SUBSET}); logs in {LOGS}")
    print(f"{R.passed} passed, {R.failed} failed" + (f", {R.skipped} skipped" if R.skipped else ""))
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
