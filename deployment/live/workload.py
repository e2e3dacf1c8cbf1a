"""The API client that counts what it was answered, and the reads and writes the test drives."""

import collections
import http.client
import json
import random
import threading
import time

from common import now


class ApiUnavailable(Exception):
    pass


class Api:
    """HTTP/1.1 client (one keep-alive connection per thread) that counts what it was answered."""

    def __init__(self, port, token):
        self.port, self.token = port, token
        self.local = threading.local()
        self.lock = threading.Lock()
        self.requests = collections.Counter()   # (route template, method, status)
        self.cache = collections.Counter()      # hit, miss, error, bypass, collapsed

    def _connection(self):
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.local.conn

    def call(self, method, template, path=None, body=None, headers=None, record=True):
        path = path or template
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    raise ApiUnavailable(str(error)) from error
        result = (response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        if record:
            with self.lock:
                self.requests[(template, method, response.status)] += 1
                status = result[1].get("cache-status", "")
                if status:
                    self.cache[classify_cache_status(status)] += 1
                    if "collapsed" in status:
                        self.cache["collapsed"] += 1
        return result

    def try_call(self, *args, **kwargs):
        try:
            return self.call(*args, **kwargs)
        except ApiUnavailable:
            return None

    def total(self, predicate=lambda key: True):
        with self.lock:
            return sum(count for key, count in self.requests.items() if predicate(key))


def classify_cache_status(value):
    if value.endswith("; hit") or value == "openrisk; hit":
        return "hit"
    if "fwd=miss" in value:
        return "miss"
    if "redis-error" in value:
        return "error"
    return "bypass"


class Workload:
    """Reads and writes of one tenant: a fixed read set (mostly hits), writes through the API and
    through SQL. `steady()` runs it in the background at about 20 requests a second."""

    def __init__(self, api, pg, tenant, risks, assets, bulk_tenant):
        self.api, self.pg, self.tenant = api, pg, tenant
        self.risks, self.assets, self.bulk_tenant = risks, assets, bulk_tenant
        self.reads = [("/api/v1/risks", "/api/v1/risks?limit=20"), ("/api/v1/risks", "/api/v1/risks?limit=50"),
                      ("/api/v1/stats", None), ("/api/v1/stats/risk-matrix", None),
                      ("/api/v1/stats/trends", None), ("/api/v1/assets", None)]
        self.reads += [("/api/v1/risks/{id}", f"/api/v1/risks/{rid}") for rid in risks[:16]]
        self.reads += [("/api/v1/assets/{id}", f"/api/v1/assets/{aid}") for aid in assets[:4]]
        self.counter = 0
        self.round_lock = threading.Lock()
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.errors = 0

    def read_round(self):
        for template, path in self.reads:
            self.api.try_call("GET", template, path)

    def api_write(self):
        self.counter += 1
        rid = random.choice(self.risks[:16])
        self.api.try_call("PATCH", "/api/v1/risks/{id}", f"/api/v1/risks/{rid}",
                          body={"impact": 1 + self.counter % 5, "owner": f"live-{self.counter}"})

    def sql_write(self):
        self.counter += 1
        rid = random.choice(self.risks[16:64])
        try:
            self.pg.sql(f"UPDATE risks SET owner = 'sql-{self.counter}' WHERE id = '{rid}'")
        except Exception:  # noqa: BLE001 - Postgres may be the fault under test
            self.errors += 1

    def bulk_write(self):
        """Every risk of the other seeded tenant (about 1200 outbox rows: risk and history)."""
        self.counter += 1
        self.pg.sql(f"UPDATE risks SET owner = 'bulk-{self.counter}' WHERE tenant_id = '{self.bulk_tenant}'")

    def steady(self):
        self.running.set()
        rounds = 0
        while not self.stopped.is_set():
            if not self.running.is_set():
                time.sleep(0.05)
                continue
            started = now()
            with self.round_lock:
                if self.running.is_set():
                    self.read_round()
                    rounds += 1
                    if rounds % 3 == 0:
                        self.api_write()
                    if rounds % 4 == 0:
                        self.sql_write()
            time.sleep(max(0.0, 1.0 - (now() - started)))

    def pause(self):
        self.running.clear()
        with self.round_lock:
            pass

    def resume(self):
        self.running.set()
