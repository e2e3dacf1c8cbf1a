"""Every server of the live test, started on free loopback ports in a scratch directory."""

import os
import subprocess

from common import BIN, LOGS, R, free_port, log, wait_until
from observers import Prometheus, Webhook
from processes import Postgres, Proc, Redis, binary_env, wait_http
from rules import write_alertmanager_config, write_prometheus_config, write_rules
from workload import Api


class Stack:
    def __init__(self, work):
        self.work = work
        self.pg = Postgres(work)
        self.replica = Postgres(work, "postgres-replica", replica_of=self.pg)
        self.redis = Redis(work)
        self.api_port = free_port()
        self.api_metrics_port = free_port()
        self.inv_ports = [free_port(), free_port()]
        self.redis_exporter_port = free_port()
        self.pg_exporter_port = free_port()
        self.prom_port = free_port()
        self.am_port = free_port()
        self.webhook = None

    def api_env(self):
        return binary_env(DATABASE_URL=self.pg.url(), REDIS_URL=self.redis.url(),
                          DATABASE_REPLICA_URLS=self.replica.url(),
                          API_ADDR=f"127.0.0.1:{self.api_port}", METRICS_ADDR=f"127.0.0.1:{self.api_metrics_port}",
                          OPENRISK_LOG__FORMAT="json",
                          OPENRISK_LOG__FILTER="info,openrisk_api::app=debug", OPENRISK_POOL__MAX_CONNECTIONS=10,
                          OPENRISK_POOL__MIN_IDLE=2)

    def inv_env(self, index, mode="listen"):
        return binary_env(DATABASE_URL=self.pg.url(), REDIS_URL=self.redis.url(),
                          METRICS_ADDR=f"127.0.0.1:{self.inv_ports[index]}", OPENRISK_LOG__FORMAT="json",
                          OPENRISK_LOG__FILTER="info,openrisk_invalidator=debug", OPENRISK_INVALIDATOR__MODE=mode)

    def run_api(self, *args):
        result = subprocess.run([os.path.join(BIN, "openrisk-api"), *args], env=self.api_env(), capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"openrisk-api {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def start_api(self):
        self.api.start()
        wait_http(self.api, f"http://127.0.0.1:{self.api_port}/healthz")

    def restart_api(self):
        self.api.stop()
        self.start_api()

    def start_invalidator(self, index, mode="listen"):
        proc = self.invalidators[index]
        proc.env = self.inv_env(index, mode)
        proc.start()
        wait_http(proc, f"http://127.0.0.1:{self.inv_ports[index]}/healthz")

    def start(self):
        log(f"work directory {self.work}, logs in {LOGS}")
        self.pg.start()
        self.replica.start()
        self.pg.sql("CREATE DATABASE openrisk", database="postgres")
        self.redis.start()
        self.run_api("migrate")
        seeded = self.run_api("seed", "--tenants", "1", "--risks", "600", "--demo")
        self.token = next(line.split(": ", 1)[1] for line in seeded.splitlines() if line.startswith("token: "))
        self.tenant = next(line.split(": ", 1)[1] for line in seeded.splitlines() if line.startswith("demo tenant: "))
        self.bulk_tenant = self.pg.value(f"SELECT id FROM tenants WHERE id <> '{self.tenant}' LIMIT 1")
        # A viewer of the other tenant: a fault that must fill the pool needs two tenants, since
        # one tenant's requests hold at most its share of it (three quarters).
        self.bulk_token = self.run_api("token", "create", "--tenant", self.bulk_tenant, "--role", "viewer").strip()
        # The seed's outbox rows predate every cache entry (Redis is empty): dropped, so that the
        # seeding transactions' length does not show up as invalidation lag.
        self.pg.sql("DELETE FROM cache_outbox")
        self.outbox_inserts_before = self.outbox_inserts()

        self.invalidators = [Proc(f"invalidator-{i + 1}", [os.path.join(BIN, "openrisk-invalidator"), "run"])
                             for i in range(2)]
        for index in range(2):
            self.start_invalidator(index)
        self.api = Proc("api", [os.path.join(BIN, "openrisk-api"), "serve"], env=self.api_env())
        self.start_api()

        # As in compose: no node of its own, Prometheus names the node (/scrape?target=).
        self.redis_exporter = Proc("redis-exporter", [
            "prometheus-redis-exporter", "-redis.addr=",
            "-web.listen-address", f"127.0.0.1:{self.redis_exporter_port}"]).start()
        self.pg_exporter = Proc("postgres-exporter", [
            "prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{self.pg_exporter_port}"],
            env=binary_env(DATA_SOURCE_NAME=f"postgresql://postgres@127.0.0.1:{self.pg.port}/openrisk?sslmode=disable")
        ).start()

        self.webhook = Webhook()
        am_config = os.path.join(self.work, "alertmanager.yml")
        write_alertmanager_config(am_config, self.webhook.port)
        rules_dir = os.path.join(self.work, "rules")
        problems = write_rules(rules_dir)
        R.check("rule copies differ from the project's only in for: (deployment/live/for.yml)", not problems,
                "; ".join(problems))
        prom_config = os.path.join(self.work, "prometheus.yml")
        write_prometheus_config(prom_config, rules_dir, {
            "openrisk-api": [f"127.0.0.1:{self.api_metrics_port}"],
            "openrisk-invalidator": [f"127.0.0.1:{port}" for port in self.inv_ports],
            "redis": [f"127.0.0.1:{self.redis.port}"],
            "postgres": [f"127.0.0.1:{self.pg_exporter_port}"],
            "prometheus": [f"127.0.0.1:{self.prom_port}"],
        }, self.am_port, {"redis": f"127.0.0.1:{self.redis_exporter_port}"})
        for name, argv in [("promtool check config (rewritten prometheus.yml and rules)",
                            ["promtool", "check", "config", prom_config]),
                           ("amtool check-config (rewritten alertmanager.yml)", ["amtool", "check-config", am_config])]:
            result = subprocess.run(argv, capture_output=True, text=True)
            R.check(name, result.returncode == 0, result.stdout + result.stderr)

        os.makedirs(os.path.join(self.work, "alertmanager"))
        self.alertmanager = Proc("alertmanager", [
            "prometheus-alertmanager", f"--config.file={am_config}",
            f"--storage.path={os.path.join(self.work, 'alertmanager')}",
            f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address="]).start()
        self.prometheus_proc = Proc("prometheus", [
            "prometheus", f"--config.file={prom_config}", f"--storage.tsdb.path={os.path.join(self.work, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}"]).start()
        wait_http(self.alertmanager, f"http://127.0.0.1:{self.am_port}/-/ready")
        wait_http(self.prometheus_proc, f"http://127.0.0.1:{self.prom_port}/-/ready")
        self.prom = Prometheus(self.prom_port)

        def all_up():
            targets = self.prom.get("/api/v1/targets")["activeTargets"]
            return len(targets) == 6 and all(t["health"] == "up" for t in targets) and targets

        targets = wait_until("every target up", all_up, 30)
        down = [] if targets else [f"{t['labels']['job']} {t['scrapeUrl']}: {t['health']} {t['lastError']}"
                                   for t in self.prom.get("/api/v1/targets")["activeTargets"] if t["health"] != "up"]
        R.check("Prometheus scrapes all 6 targets (API, 2 invalidators, Redis and Postgres through their exporters, "
                "itself)", bool(targets), "; ".join(down))
        am_seen = wait_until("alertmanager discovered", lambda: self.prom.get("/api/v1/alertmanagers")
                             ["activeAlertmanagers"], 20)
        R.check("Prometheus sends alerts to the Alertmanager", bool(am_seen))
        self.api_client = Api(self.api_port, self.token)

    def outbox_inserts(self):
        """Rows ever written to the outbox (its identity sequence; no write in the test rolls back)."""
        return int(self.pg.value("SELECT last_value FROM pg_sequences WHERE schemaname || '.' || sequencename "
                                 "= pg_get_serial_sequence('cache_outbox', 'id')"))

    def outbox_rows(self):
        return int(self.pg.value("SELECT count(*) FROM cache_outbox_pending"))
