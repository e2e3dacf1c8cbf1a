"""The faults the live test injects, and which of them each LIVE_SUBSET runs."""

import concurrent.futures
import json
import random
import signal
import threading
import time
import uuid

from alerting import AlertWatch
from common import R, SUBSET, http_get, log, now, wait_until
from workload import Api


class Faults(AlertWatch):
    """One method a fault: inject it, watch its alerts fire, recover, watch them resolve."""

    def poison_row(self):
        stack = self.stack
        fault = "poison outbox row"
        log(f"fault: {fault}")
        before = int(stack.pg.value("SELECT count(*) FROM cache_outbox_dead_letter"))
        since = now()
        stack.pg.sql(f"INSERT INTO cache_outbox (tenant_id, table_name, op, tags) "
                     f"VALUES ('{stack.tenant}', 'no_such_table', 'UPDATE', ARRAY['risk:live'])")
        rows = self.await_firing(fault, ["OpenRiskInvalidatorPoisonEvents"], since, 30)
        dead = int(stack.pg.value("SELECT count(*) FROM cache_outbox_dead_letter")) - before
        R.check(f"{fault}: the row is in cache_outbox_dead_letter", dead == 1, f"{dead} new dead letters")
        poison = stack.prom.scalar("sum(openrisk_invalidator_poison_events_total)")
        R.check(f"{fault}: openrisk_invalidator_poison_events_total counts it", poison == dead, str(poison))
        self.resolve_in_full_run(rows, since, 16 * 60 + 60,
                                 "increase(...[15m]): resolves 15 minutes after the last dead letter")

    def api_killed(self):
        stack = self.stack
        self.cycle("API killed (SIGKILL)", ["OpenRiskApiDown"], stack.api.kill, stack.start_api)

    def redis_setting(self, name, wrong, right, alert):
        """Sets Redis's `name` to `wrong` and restarts the API, which reads it at start-up only."""
        stack = self.stack

        def setting(value):
            stack.redis.cli("CONFIG", "SET", name, value)
            stack.restart_api()

        self.cycle(f"Redis {name} {wrong}, API restarted", [alert], lambda: setting(wrong), lambda: setting(right))

    def eviction_policy(self):
        self.redis_setting("maxmemory-policy", "allkeys-random", "volatile-lru", "OpenRiskRedisEvictionPolicyWrong")

    def persistence(self):
        self.redis_setting("save", "3600 1", "", "OpenRiskRedisPersistenceOn")

    def redis_memory(self):
        redis = self.stack.redis
        self.cycle("Redis maxmemory lowered to 1.1 x used", ["OpenRiskRedisMemoryHigh"],
                   lambda: redis.cli("CONFIG", "SET", "maxmemory", str(int(redis.used_memory() * 1.1))),
                   lambda: redis.cli("CONFIG", "SET", "maxmemory", "64mb"))

    def postgres_connections(self):
        pg = self.stack.pg
        current = int(pg.value("SELECT count(*) FROM pg_stat_activity WHERE datname = 'openrisk'"))
        sessions = []

        def hold():
            sessions.extend(pg.session(f"psql-hold-{i}", "SELECT pg_sleep(600)", "openrisk-live-hold")
                            for i in range(max(0, 45 - current)))

        self.cycle("45 connections held on the openrisk database", ["OpenRiskPostgresConnectionsHigh"], hold,
                   lambda: pg.end_sessions("openrisk-live-hold", sessions))

    def replica_killed(self):
        stack = self.stack
        fault = "invalidator replica 2 killed (SIGKILL)"

        def survivor_drains():
            stack.workload.sql_write()
            drained = wait_until("outbox drained by replica 1", lambda: stack.outbox_rows() == 0, 10, 0.1)
            R.check(f"{fault}: the surviving replica drains the outbox", bool(drained))

        self.cycle(fault, ["OpenRiskInvalidatorReplicaDown"], stack.invalidators[1].kill,
                   lambda: stack.start_invalidator(1), while_down=survivor_drains)

    def read_replica_stopped(self):
        stack = self.stack
        fault = "read replica stopped (fast shutdown), reads continuing"

        def primary_serves():
            try:
                status, body = http_get(f"http://127.0.0.1:{stack.api_port}/readyz")
                ready = json.loads(body)
            except (OSError, ValueError) as error:
                status, ready = None, str(error)
            R.check(f"{fault}: /readyz stays 200, degraded, with the replica down",
                    status == 200 and ready.get("status") == "degraded"
                    and [r.get("status") for r in ready.get("replicas", [])] == ["down"], f"{status} {ready}")
            before = stack.prom.scalar('sum(openrisk_db_reads_total{target="primary"})') or 0
            # A write to a risk the read round reads, invalidated before the round: at least one miss
            # falls in this window whatever the background workload's rhythm (it writes every 3 s).
            stack.workload.api_write()
            wait_until("outbox drained by the invalidators", lambda: stack.outbox_rows() == 0, 10, 0.05)
            stack.workload.read_round()
            stack.prom.wait_scraped()
            after = stack.prom.scalar('sum(openrisk_db_reads_total{target="primary"})') or 0
            R.check(f"{fault}: misses are read from the primary meanwhile", after > before, f"{before} -> {after}")

        self.cycle(fault, ["OpenRiskReadReplicaOutOfRotation"], lambda: stack.replica.proc.stop(signal.SIGINT),
                   stack.replica.start, while_down=primary_serves)

    def listener(self):
        stack = self.stack

        def restart(mode):
            stack.invalidators[1].stop()
            stack.start_invalidator(1, mode=mode)

        self.cycle("invalidator replica 2 without LISTEN (restarted in poll mode, labelled listen)",
                   ["OpenRiskInvalidatorListenerDisconnected"], lambda: restart("poll"), lambda: restart("listen"))

    def dilute_lag(self, rows):
        """Normal write traffic after the catch-up: bulk updates (about 1200 events each, applied
        within milliseconds) until the lag p99 over 5 minutes is back under 1 s."""
        stack = self.stack
        recovered = now()
        for _ in range(25):
            stack.workload.bulk_write()
            wait_until("drained", lambda: stack.outbox_rows() == 0, 10, 0.05)
            time.sleep(1.2)
            p99 = stack.prom.scalar("openrisk:invalidation_lag_seconds:p99_rate5m")
            if p99 is not None and p99 <= 1:
                break
        self.await_resolved(rows, recovered, 30, why="after bulk writes pushed the slow events under 1 %")

    def all_replicas_stopped(self):
        stack = self.stack
        fault = "both invalidator replicas stopped, writes continuing"
        log(f"fault: {fault}")
        backlog_before = stack.outbox_rows()
        since = now()
        for proc in stack.invalidators:
            proc.stop()
        rows = self.await_firing(fault, ["OpenRiskNoInvalidatorUp"], since, 30)
        stack.workload.sql_write()
        stack.workload.api_write()
        backlog = stack.outbox_rows()
        R.check(f"{fault}: writes queue in the outbox", backlog > backlog_before, f"{backlog} rows")
        # The per-replica alert fires later (5 m against 2 m in production): Alertmanager must
        # inhibit it while OpenRiskNoInvalidatorUp fires.
        paged = since + (rows["OpenRiskNoInvalidatorUp"]["hook"] or 0)
        down = wait_until("replica alerts firing", lambda: stack.prom.state("OpenRiskInvalidatorReplicaDown")
                          == "firing", 20, 0.25)
        time.sleep(2.5)
        leaked = stack.webhook.any_between("OpenRiskInvalidatorReplicaDown", paged, now())
        R.check(f"{fault}: OpenRiskInvalidatorReplicaDown fires in Prometheus but Alertmanager inhibits it",
                bool(down) and not leaked, f"firing {bool(down)}, notifications {leaked}")
        recovered = now()
        for index in range(2):
            stack.start_invalidator(index)
        self.await_resolved(rows, recovered, 30)
        drained = wait_until("backlog drained", lambda: stack.outbox_rows() == 0, 20, 0.1)
        R.check(f"{fault}: the restarted replicas drain the backlog", bool(drained))
        lag = self.await_firing(fault + " (after restart)", ["OpenRiskInvalidationLagHigh"], recovered, 30)
        self.dilute_lag(lag)

    def redis_stopped(self):
        stack = self.stack
        fault = "Redis stopped, reads and bulk writes continuing"
        log(f"fault: {fault}")
        errors_before = stack.api_client.total(lambda key: key[2] >= 500)
        alerts = ["OpenRiskCacheDegraded", "OpenRiskNoInvalidatorConnected", "OpenRiskOutboxBacklogGrowing"]
        timeout = 40
        if SUBSET == "full":
            alerts.append("OpenRiskOutboxOldestEventTooOld")
            timeout = 120
        last_write = [0.0]

        def keep_writing():
            if now() - last_write[0] > 1.5:
                last_write[0] = now()
                stack.workload.bulk_write()

        since = now()
        stack.redis.proc.stop()
        rows = self.await_firing(fault, alerts, since, timeout, while_waiting=keep_writing)
        errors = stack.api_client.total(lambda key: key[2] >= 500) - errors_before
        R.check(f"{fault}: the API keeps answering without 5xx (reads from Postgres)", errors == 0,
                f"{errors} 5xx")
        # Tenants held back by a replica follow from Redis being out of reach of every replica:
        # Alertmanager must inhibit that alert while OpenRiskNoInvalidatorConnected fires (checked
        # once Alertmanager has had the time to send it, its group_wait being 1 s).
        paged = since + (rows["OpenRiskNoInvalidatorConnected"]["hook"] or 0)

        def held_back_firing():
            keep_writing()
            return stack.prom.state("OpenRiskInvalidatorTenantsHeldBack") == "firing"

        held = bool(wait_until("tenants held back firing", held_back_firing, 20, 0.25))
        time.sleep(2.5)
        leaked = stack.webhook.any_between("OpenRiskInvalidatorTenantsHeldBack", paged, now())
        R.check(f"{fault}: tenants held back fire in Prometheus but Alertmanager inhibits them",
                held and not leaked, f"firing {held}, notifications {leaked}")
        if held:
            self.exercised.add("OpenRiskInvalidatorTenantsHeldBack")
        recovered = now()
        stack.redis.start()
        self.await_resolved(rows, recovered, 60)
        drained = wait_until("backlog drained", lambda: stack.outbox_rows() == 0, 60, 0.2)
        R.check(f"{fault}: the replicas reconnect and drain the backlog", bool(drained))
        lag = self.await_firing(fault + " (after recovery)", ["OpenRiskInvalidationLagHigh"], recovered, 30)
        self.resolve_in_full_run(lag, recovered, 7 * 60,
                                 "thousands of events waited: the p99 over 5 minutes stays high for up to 5 minutes")

    def hit_ratio(self):
        stack = self.stack
        fault = "reads of uncached pages (cache misses)"
        log(f"fault: {fault}")
        api = stack.api_client
        # Distinct cacheable lists, as many as the alert takes: pages past 10 are never cached (they
        # would be bypasses, not misses), so limits and pages vary, then score floors too.
        queries = (f"limit={limit}&page={page}" + (f"&min_score={floor}" if floor else "")
                   for floor in range(0, 1001) for limit in range(1, 201) for page in range(1, 11))
        lock = threading.Lock()

        def misses():
            for _ in range(40):
                with lock:
                    query = next(queries)
                api.try_call("GET", "/api/v1/risks", f"/api/v1/risks?{query}")

        def hits():
            for _ in range(60):
                template, path = random.choice(stack.workload.reads[:6])
                api.try_call("GET", template, path)

        def drive(work):
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: work(), range(4)))

        since = now()
        rows = self.await_firing(fault, ["OpenRiskCacheHitRatioLow"], since, 60, while_waiting=lambda: drive(misses))
        recovered = now()
        deadline = now() + 60
        while now() < deadline and stack.prom.state("OpenRiskCacheHitRatioLow") != "inactive":
            drive(hits)
        self.await_resolved(rows, recovered, 30, why="after cached reads brought the ratio back over 75 %")

    def database_lock(self):
        stack = self.stack
        hold = 20
        fault = f"risks table locked {hold} s, 64 uncached readers, pool of 10"
        log(f"fault: {fault}")
        api = stack.api_client
        stack.workload.pause()
        locker = stack.pg.session("psql-lock", "BEGIN; LOCK TABLE risks IN ACCESS EXCLUSIVE MODE; "
                                               f"SELECT pg_sleep({hold + 60}); COMMIT;", "openrisk-live-lock")
        wait_until("lock granted", lambda: stack.pg.value(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'risks' AND l.mode = 'AccessExclusiveLock' AND l.granted") == "1", 10, 0.05)
        since = now()
        other_tenant = Api(stack.api_port, stack.bulk_token)

        def reader(client):
            # A new id each time: never cached (a miss that reads the locked table, then 404 for
            # an id of no risk), whatever earlier phases left in the cache.
            while now() - since < hold:
                client.try_call("GET", "/api/v1/risks/{id}", f"/api/v1/risks/{uuid.uuid4()}")

        # 64 readers, half of each of two tenants, for a pool of 10: each tenant's requests hold at
        # most its share of the pool (8), so together they fill it. Ten wait on the lock, the
        # others for a place of their tenant's (then 429) or for a connection until
        # pool.acquire_timeout_ms (5 s) and fail with 503, over and over.
        pool = concurrent.futures.ThreadPoolExecutor(64)
        futures = [pool.submit(reader, api if index % 2 else other_tenant) for index in range(64)]
        alerts = ["OpenRiskDbPoolSaturated", "OpenRiskSlowDatabaseQueries", "OpenRiskApiErrorRatioHigh",
                  "OpenRiskApiLatencyHigh", "OpenRiskTenantOverItsShare"]
        # OpenRiskTenantOverItsShare is the last: its rate over 5 minutes needs the 429s of the
        # first seconds, then its 10 s `for:`.
        rows = self.await_firing(fault, alerts, since, hold + 30)
        time.sleep(max(0.0, since + hold - now()))
        # The recovery: the lock holder's session is ended (as an operator would end it).
        recovered = now()
        stack.pg.end_sessions("openrisk-live-lock", [])
        for future in futures:
            future.result()
        pool.shutdown()
        locker.discard()
        stack.workload.resume()
        saturated = {"OpenRiskDbPoolSaturated": rows["OpenRiskDbPoolSaturated"]}
        self.await_resolved(saturated, recovered, 30)
        slow = {name: rows[name] for name in alerts[1:]}
        self.resolve_in_full_run(slow, recovered, 7 * 60, "ratios and quantiles over 5 minutes: resolve once the "
                                 "slow and failed reads leave the window")


PLANS = {
    # (name, method); order matters: see the comments in deployment/README.md.
    "ci": ["poison_row", "replica_killed", "all_replicas_stopped", "api_killed", "listener",
           "postgres_connections", "read_replica_stopped", "redis_stopped"],
    "full": ["poison_row", "api_killed", "eviction_policy", "persistence", "redis_memory", "postgres_connections", "replica_killed",
             "listener", "all_replicas_stopped", "read_replica_stopped", "database_lock", "hit_ratio",
             "redis_stopped"],
}
