"""What watches the alerts: the webhook behind Alertmanager and a Prometheus HTTP API client."""

import datetime
import http.server
import json
import os
import threading
import time
import urllib.parse
import urllib.request

from common import LOGS, T0, now


class Webhook:
    """Alertmanager's receiver: every alert of every notification, with when it arrived."""

    def __init__(self):
        self.events = []  # (arrived, receiver, alertname, status)
        self.lock = threading.Lock()
        self.path = os.path.join(LOGS, "webhook.jsonl")
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = now()
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {}
                receiver = self.path.strip("/")
                with hook.lock:
                    for alert in payload.get("alerts", []):
                        hook.events.append((arrived, receiver, alert["labels"].get("alertname"), alert["status"]))
                    with open(hook.path, "a") as out:
                        out.write(json.dumps({"at": round(arrived - T0, 2), "receiver": receiver, **payload}) + "\n")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, alertname, status, since):
        with self.lock:
            for arrived, receiver, name, state in self.events:
                if name == alertname and state == status and arrived >= since:
                    return arrived, receiver
        return None

    def any_between(self, alertname, start, end):
        with self.lock:
            return [e for e in self.events if e[2] == alertname and start <= e[0] <= end and e[3] == "firing"]


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body}")
        return body["data"]

    def query(self, expr):
        """[(labels, value)] of an instant query."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def scalar(self, expr):
        """The value of a query that yields one series, None when it yields none."""
        result = self.query(expr)
        return result[0][1] if result else None

    def alerts(self):
        return self.get("/api/v1/alerts")["alerts"]

    def state(self, alertname):
        states = {a["state"] for a in self.alerts() if a["labels"].get("alertname") == alertname}
        return "firing" if "firing" in states else ("pending" if states else "inactive")

    def fired_at(self, alertname, for_seconds):
        """When the alert started firing (its activeAt plus its for:), on the monotonic clock;
        None while it is not firing."""
        active = [a["activeAt"] for a in self.alerts()
                  if a["labels"].get("alertname") == alertname and a["state"] == "firing"]
        if not active:
            return None
        return min(wall_to_monotonic(stamp) for stamp in active) + for_seconds

    def wait_scraped(self):
        """Waits until every target has been scraped twice more (fresh values everywhere)."""
        time.sleep(2.5)


def wall_to_monotonic(stamp):
    """An RFC 3339 time from Prometheus (nanoseconds, Z) on this process's monotonic clock."""
    date, _, fraction = stamp.rstrip("Z").partition(".")
    wall = datetime.datetime.fromisoformat(date).replace(tzinfo=datetime.timezone.utc).timestamp()
    wall += float("0." + fraction) if fraction else 0.0
    return wall - (time.time() - time.monotonic())
