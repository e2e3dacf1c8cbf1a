"""The phases before the faults: warm-up, then log lines, series and values checked against
what the test did."""

import concurrent.futures
import json
import math
import threading
import uuid

from common import R, log, now, wait_until
from rules import dashboard_queries, recording_rules


HEALTH_ROUTES = ("/healthz", "/readyz")


def warm_up(stack, workload):
    api = stack.api_client
    log("warm-up: reads (miss, then hit), writes through the API and through SQL, single-flight")
    workload.read_round()
    workload.read_round()
    created = api.call("POST", "/api/v1/risks", body={"title": "Live test risk", "impact": 3, "probability": 4})
    R.check("POST /api/v1/risks answers 201", created[0] == 201, created[2][:200])
    asset = api.call("POST", "/api/v1/assets", body={"name": "live-db", "asset_type": "server", "criticality": "HIGH"})
    R.check("POST /api/v1/assets answers 201", asset[0] == 201, asset[2][:200])
    if created[0] == 201 and asset[0] == 201:
        rid, aid = json.loads(created[2])["id"], json.loads(asset[2])["id"]
        linked = api.call("PUT", "/api/v1/risks/{risk_id}/assets/{asset_id}", f"/api/v1/risks/{rid}/assets/{aid}")
        R.check("PUT /api/v1/risks/{risk_id}/assets/{asset_id} answers 204", linked[0] == 204, linked[2][:200])
    for _ in range(3):
        workload.api_write()
        workload.sql_write()
    workload.read_round()

    # Single-flight: a burst of identical reads of a freshly invalidated entry.
    rid = workload.risks[70]
    path = f"/api/v1/risks/{rid}"
    for attempt in range(10):
        stack.pg.sql(f"UPDATE risks SET owner = 'burst-{attempt}' WHERE id = '{rid}'")
        wait_until("outbox drained", lambda: stack.outbox_rows() == 0, 10, 0.05)
        barrier = threading.Barrier(16)

        def burst():
            barrier.wait()
            return api.call("GET", "/api/v1/risks/{id}", path)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: burst(), range(16)))
        if api.cache["collapsed"] > 0:
            break
    R.check("a burst of identical misses collapses into one database read (single-flight)",
            api.cache["collapsed"] > 0, f"{api.cache['collapsed']} collapsed")


def check_logs(stack):
    api = stack.api_client
    request_id = f"live-{uuid.uuid4()}"
    rid = stack.workload.risks[3]
    status, headers, _ = api.call("GET", "/api/v1/risks/{id}", f"/api/v1/risks/{rid}",
                                  headers={"x-request-id": request_id})
    R.check("x-request-id sent by the client comes back on the response", headers.get("x-request-id") == request_id,
            str(headers.get("x-request-id")))
    status, headers, _ = api.call("GET", "/api/v1/stats")
    generated = headers.get("x-request-id", "")
    try:
        ok = uuid.UUID(generated).version == 4
    except ValueError:
        ok = False
    R.check("without one, the response carries a generated UUID v4 x-request-id", ok, generated)

    def find_request_line():
        with open(stack.api.log_path) as handle:
            for line in handle:
                if request_id in line:
                    return json.loads(line)
        return None

    line = wait_until("request log line", find_request_line, 5, 0.1)
    span = next((s for s in (line or {}).get("spans", []) if s.get("name") == "request"), {})
    R.check("the request's JSON log line carries its request id, route template and tenant (request span)",
            span.get("request_id") == request_id and span.get("route") == "/api/v1/risks/{id}"
            and span.get("tenant") == stack.tenant and span.get("method") == "GET", json.dumps(line))
    stack.example_request_line = line

    def find_batch_line():
        for proc in stack.invalidators:
            with open(proc.log_path) as handle:
                for text in handle:
                    if '"batch applied"' in text:
                        parsed = json.loads(text)
                        batch = next((s for s in parsed.get("spans", []) if s.get("name") == "batch"), None)
                        if batch and stack.tenant in batch.get("tenants", ""):
                            return parsed
        return None

    line = wait_until("batch log line", find_batch_line, 5, 0.1)
    batch = next((s for s in (line or {}).get("spans", []) if s.get("name") == "batch"), {})
    R.check("invalidator batch lines carry the batch size, tenants and lag (batch span)",
            all(key in batch for key in ("size", "tenants", "lag_ms")), json.dumps(line))
    stack.example_batch_line = line


def check_series(stack):
    prom = stack.prom
    log("recording rules and dashboard panels, with traffic flowing")
    for name in recording_rules():
        result = prom.query(name)
        finite = [value for _, value in result if math.isfinite(value)]
        R.check(f"recording rule {name} has a series", bool(finite), f"{len(result)} series")
    panels = set()
    for title, ref, expr in dashboard_queries():
        result = prom.query(expr)
        finite = [value for _, value in result if math.isfinite(value)]
        panels.add(title)
        R.check(f"panel '{title}' query {ref} returns data", bool(finite), f"{len(result)} series: {expr}")
    log(f"{len(panels)} panels checked")


def check_values(stack):
    """With the workload paused and drained: Prometheus's numbers against the test's own counts."""
    prom, api, pg = stack.prom, stack.api_client, stack.pg
    stack.workload.pause()
    wait_until("outbox drained", lambda: stack.outbox_rows() == 0, 20, 0.1)
    prom.wait_scraped()
    log("values against what the test did")
    sent = api.total(lambda key: key[0] not in HEALTH_ROUTES)
    served = prom.scalar('sum(openrisk_http_requests_total{route!~"/(healthz|readyz)"})')
    R.check("requests served (openrisk_http_requests_total) = requests the test sent", served == sent,
            f"prometheus {served}, test {sent}")
    by_route = {(m["route"], m["method"], int(m["status"])): v for m, v in prom.query(
        'sum by (route, method, status) (openrisk_http_requests_total{route!~"/(healthz|readyz)"})')}
    with api.lock:
        mine = {key: float(count) for key, count in api.requests.items() if key[0] not in HEALTH_ROUTES}
    R.check("requests by route template, method and status agree", by_route == mine,
            f"only in prometheus: {sorted(set(by_route.items()) - set(mine.items()))}; "
            f"only in the test: {sorted(set(mine.items()) - set(by_route.items()))}")
    with api.lock:
        cache = dict(api.cache)
    results = {m["result"]: v for m, v in prom.query("sum by (result) (openrisk_cache_requests_total)")}
    for result in ("hit", "miss"):
        R.check(f"cache lookups result={result} agree with the Cache-Status headers",
                results.get(result, 0) == cache.get(result, 0), f"prometheus {results.get(result)}, "
                f"test {cache.get(result)}")
    waits = prom.scalar("sum(openrisk_cache_singleflight_waits_total)") or 0
    R.check("single-flight waits agree with the collapsed responses", waits == cache.get("collapsed", 0),
            f"prometheus {waits}, test {cache.get('collapsed')}")
    # The hit ratio of the steady traffic (since `steady_from`), as Prometheus computes it over a
    # window inside that period, against the Cache-Status headers of the same period.
    hits, misses = (cache.get(k, 0) - stack.steady_from[1].get(k, 0) for k in ("hit", "miss"))
    window = int(now() - stack.steady_from[0]) - 1
    ratio = prom.scalar(f'sum(increase(openrisk_cache_requests_total{{result="hit"}}[{window}s])) / '
                        f'sum(increase(openrisk_cache_requests_total{{result=~"hit|miss"}}[{window}s]))')
    expected = hits / max(1, hits + misses)
    R.check("hit ratio of the steady traffic (hits / (hits + misses)) within 0.05 of the Cache-Status headers",
            ratio is not None and abs(ratio - expected) < 0.05, f"prometheus {ratio}, test {expected:.3f}")

    inserted = stack.outbox_inserts() - stack.outbox_inserts_before
    dead = int(pg.value("SELECT count(*) FROM cache_outbox_dead_letter"))

    def events_agree():
        processed = prom.scalar("sum(openrisk_invalidator_events_processed_total)") or 0
        poison = prom.scalar("sum(openrisk_invalidator_poison_events_total)") or 0
        return (processed + poison, processed, poison) if processed + poison == inserted else None

    agreed = wait_until("events processed", events_agree, 10, 0.5)
    R.check("events processed + dead-lettered (all replicas) = rows the triggers wrote to the outbox",
            bool(agreed), f"prometheus {agreed or prom.scalar('sum(openrisk_invalidator_events_processed_total)')}, "
            f"outbox inserts {inserted}, dead letters {dead}")
    per_replica = prom.query("sum by (instance) (rate(openrisk_invalidator_events_processed_total[1m]))")
    R.check("panel 'Events processed per replica' has one series per replica", len(per_replica) == 2,
            str(per_replica))
    up = prom.scalar('sum(up{job="openrisk-invalidator"})')
    R.check("panel 'Invalidators up' shows 2", up == 2, str(up))
    pool_max = prom.scalar("sum(openrisk_db_pool_max_connections)")
    R.check("panel 'PostgreSQL connections' API pool max is the configured 10", pool_max == 10, str(pool_max))
    backends = prom.scalar('sum(pg_stat_database_numbackends{datname="openrisk"})')
    actual = int(pg.value("SELECT count(*) FROM pg_stat_activity WHERE datname = 'openrisk'"))
    R.check("panel 'PostgreSQL connections' backends within 3 of pg_stat_activity",
            backends is not None and abs(backends - actual) <= 3, f"prometheus {backends}, psql {actual}")
    in_rotation = prom.scalar("min(openrisk_db_replica_in_rotation)")
    R.check("panel 'Read replicas in rotation' shows the streaming replica in rotation", in_rotation == 1,
            str(in_rotation))
    lag = prom.scalar("max(openrisk_db_replica_lag_seconds)")
    R.check("panel 'Read replica lag' is under the 1 s rotation limit", lag is not None and 0 <= lag < 1, str(lag))
    by_target = {m["target"]: v for m, v in prom.query("sum by (target) (openrisk_db_reads_total)")}
    R.check("panel 'Database reads by target' counts reads from the replica and from the primary",
            by_target.get("replica", 0) > 0 and by_target.get("primary", 0) > 0, str(by_target))
    firing = sorted({a["labels"]["alertname"] for a in prom.alerts()})
    R.check("no alert pending or firing before the faults", not firing, ", ".join(firing))
    stack.workload.resume()
