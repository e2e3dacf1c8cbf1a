"""What every part of the live test shares: where things are, the log, the PASS/FAIL tally and
polling."""

import os
import socket
import time
import urllib.request


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deployment")
SUBSET = os.environ.get("LIVE_SUBSET", "full")
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
# live.sh copies the binaries here right after building them (the target directory may be shared
# with other checkouts that build binaries of the same names).
BIN = os.environ.get("LIVE_BIN_DIR") or os.path.join(TARGET, "debug")
REPORT = os.environ.get("LIVE_REPORT_DIR") or os.path.join(TARGET, "live")
LOGS = os.path.join(REPORT, "logs")
VERBOSE = os.environ.get("VERBOSE") == "1"
T0 = time.monotonic()


def log(message):
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


def now():
    return time.monotonic()


# ---------------------------------------------------------------- results

class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS  {name}" + (f"  [{detail}]" if detail and VERBOSE else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP  {name} ({why})", flush=True)


R = Results()


def wait_until(what, probe, timeout, interval=0.2):
    """Calls probe() until it returns something truthy; returns it, or None after timeout."""
    deadline = now() + timeout
    while True:
        try:
            value = probe()
        except Exception:  # noqa: BLE001 - a probe failing is the same as "not yet"
            value = None
        if value:
            return value
        if now() > deadline:
            if VERBOSE:
                log(f"gave up waiting for {what} after {timeout}s")
            return None
        time.sleep(interval)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return response.status, response.read()
