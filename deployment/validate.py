#!/usr/bin/env python3
"""Shape checks for deployment/ that no off-the-shelf validator makes; run by check.sh.

    python3 deployment/validate.py compose|docker|k8s|dashboard|alerts|dashboard-promql-rules OUT

Each command prints what it found wrong and exits 1, or exits 0 silently. Needs PyYAML only.
Reads shared/src/config/ so that every OPENRISK_* variable set in compose or Kubernetes, or read
by the compose files from the shell, names a real configuration field.
"""

import glob
import json
import os
import re
import sys

import yaml

DEPLOYMENT = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DEPLOYMENT)
PROBE_ROUTES = re.compile(r"^/(healthz|readyz|metrics)$")

problems = []


def problem(message):
    problems.append(message)


def load_yaml_documents(path):
    with open(path) as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


# ---------------------------------------------------------------- configuration keys

def config_env_names():
    """Every environment variable the binaries read, from the structs in shared/src/config/."""
    source = ""
    for path in sorted(glob.glob(os.path.join(ROOT, "shared", "src", "config", "*.rs"))):
        with open(path) as handle:
            source += handle.read()
    structs = {}
    for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", source, re.S):
        structs[name] = re.findall(r"pub (\w+): ([\w<>:]+)", body)
    if "Settings" not in structs:
        raise SystemExit("shared/src/config/: struct Settings not found")
    # The variables read without the prefix (`Env::raw().only(&[...])`: DATABASE_URL,
    # DATABASE_REPLICA_URLS, ...), and OPENRISK_CONFIG, which names the TOML file.
    raw = {name for names in re.findall(r"Env::raw\(\)\s*\.only\(&\[([^\]]*)\]\)", source)
           for name in re.findall(r'"(\w+)"', names)}
    if "DATABASE_URL" not in raw:
        raise SystemExit("shared/src/config/: the Env::raw().only(&[...]) variables not found")
    names = raw | {"OPENRISK_CONFIG"}
    for field, kind in structs["Settings"]:
        if kind in structs:
            names |= {f"OPENRISK_{field.upper()}__{sub.upper()}" for sub, _ in structs[kind]}
        elif field != "profile":
            names.add(f"OPENRISK_{field.upper()}")
    return names


ENUMS = {
    "OPENRISK_PROFILE": {"dev", "staging", "production"},
    "OPENRISK_LOG__FORMAT": {"pretty", "json"},
    "OPENRISK_INVALIDATOR__MODE": {"listen", "poll"},
}


def check_env(where, env, known):
    for key, value in env.items():
        if key not in known:
            problem(f"{where}: {key} is not a configuration variable of shared/src/config/")
        if key in ENUMS and str(value) not in ENUMS[key]:
            problem(f"{where}: {key}={value} is not one of {sorted(ENUMS[key])}")
        if key in ("API_ADDR", "METRICS_ADDR") and not str(value).startswith("0.0.0.0:"):
            problem(f"{where}: {key}={value} must listen on 0.0.0.0 in a container")


def interpolate(value):
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR}, with the variables unset."""
    if isinstance(value, str):
        return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- compose

def environment(service):
    """A compose service's environment as a dict (compose takes a mapping or a list of K=V)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return env


def check_compose():
    path = os.path.join(DEPLOYMENT, "docker-compose.yml")
    compose = interpolate(yaml.safe_load(open(path)))
    services = compose.get("services", {})
    cluster = interpolate(yaml.safe_load(open(os.path.join(DEPLOYMENT, "docker-compose.cluster.yml"))))
    cluster_services = cluster.get("services", {})
    known = config_env_names()
    required = {"postgres", "redis", "migrate", "api", "invalidator", "prometheus", "alertmanager",
                "grafana", "redis-exporter", "postgres-exporter"}
    for name in sorted(required - set(services)):
        problem(f"compose: service {name} missing")
    if required - set(services):
        return

    if not str(services["postgres"].get("image", "")).startswith("postgres:15"):
        problem("compose: postgres must be postgres:15")
    if not str(services["redis"].get("image", "")).startswith("redis:7"):
        problem("compose: redis must be redis:7")
    redis_cmd = [str(part) for part in services["redis"].get("command", [])]
    joined = " ".join(redis_cmd)
    if "--maxmemory-policy volatile-lru" not in joined:
        problem("compose: redis must run with --maxmemory-policy volatile-lru")
    if not re.search(r"--maxmemory [1-9]\d*[kmgKMG]?[bB]?\b", joined):
        problem("compose: redis must run with a non-zero --maxmemory")

    migrate_cmd = services["migrate"].get("command", [])
    if migrate_cmd[-2:] != ["openrisk-api", "migrate"] and migrate_cmd != ["openrisk-api", "migrate"]:
        problem(f"compose: migrate must run `openrisk-api migrate`, runs {migrate_cmd}")
    if services["migrate"].get("restart", "no") != "no":
        problem("compose: migrate is a one-shot job (restart: \"no\")")
    if services["api"].get("command", [None])[:2] != ["openrisk-api", "serve"]:
        problem("compose: api must run `openrisk-api serve`")
    inv_cmd = services["invalidator"].get("command", [])
    if inv_cmd[:2] != ["openrisk-invalidator", "run"]:
        problem("compose: invalidator must run `openrisk-invalidator run`")
    if "--mode" in inv_cmd and inv_cmd[inv_cmd.index("--mode") + 1] not in ENUMS["OPENRISK_INVALIDATOR__MODE"]:
        problem("compose: invalidator --mode must be listen or poll")
    # A variable the compose files read from the shell or .env: one with the OPENRISK_ prefix must
    # be a setting, or both binaries run from that shell would refuse to start.
    for name in ("docker-compose.yml", "docker-compose.cluster.yml"):
        for variable in sorted(set(re.findall(r"\$\{(OPENRISK_\w+?)(?::?-[^}]*)?\}",
                                              open(os.path.join(DEPLOYMENT, name)).read()))):
            if variable not in known:
                problem(f"compose: {name} reads ${{{variable}}}, an OPENRISK_ name that is no setting; "
                        "rename it outside the prefix")
    # Prometheus labels each replica wake_mode by the alias it was found under, so the alias must
    # name the mode the replica runs (both spelled with the same variable, unset here).
    raw = yaml.safe_load(open(path))["services"]["invalidator"]
    raw_cmd = raw.get("command", [])
    raw_mode = raw_cmd[raw_cmd.index("--mode") + 1] if "--mode" in raw_cmd else "listen"
    networks = raw.get("networks") or {}
    aliases = (networks.get("default") or {}).get("aliases", []) if isinstance(networks, dict) else []
    if f"invalidator-{raw_mode}" not in aliases:
        problem(f"compose: invalidator needs the network alias invalidator-{raw_mode} (its --mode), "
                "from which prometheus.yml takes the wake_mode label")
    prometheus = yaml.safe_load(open(os.path.join(DEPLOYMENT, "prometheus", "prometheus.yml")))
    jobs = {job["job_name"]: job for job in prometheus.get("scrape_configs", [])}
    names = {name for sd in jobs.get("openrisk-invalidator", {}).get("dns_sd_configs", []) for name in sd.get("names", [])}
    for mode in sorted(ENUMS["OPENRISK_INVALIDATOR__MODE"]):
        if f"invalidator-{mode}" not in names:
            problem(f"prometheus.yml: job openrisk-invalidator must look up invalidator-{mode}")
    # Job redis scrapes the nodes listed in redis-targets.yml, which each variant mounts: the
    # single node, or every node of the cluster (not the single node, idle there).
    sd_files = [f for sd in jobs.get("redis", {}).get("file_sd_configs", []) for f in sd.get("files", [])]
    if sd_files != ["redis-targets.yml"]:
        problem("prometheus.yml: job redis must read its nodes from redis-targets.yml (file_sd_configs)")
    else:
        def mounts(service):
            return {str(v).split(":")[1]: str(v).split(":")[0] for v in service.get("volumes", []) or []}
        cluster_nodes = {name for name, service in cluster_services.items()
                         if "--cluster-enabled" in [str(part) for part in service.get("command", []) or []]}
        if not cluster_nodes:
            problem("compose: docker-compose.cluster.yml runs no node with --cluster-enabled")
        base_mounts = mounts(services["prometheus"])
        for where, mounted, nodes in (
                ("docker-compose.yml", base_mounts, {"redis"}),
                ("docker-compose.yml with docker-compose.cluster.yml",
                 {**base_mounts, **mounts(cluster_services.get("prometheus", {}))}, cluster_nodes)):
            source = mounted.get("/etc/prometheus/redis-targets.yml")
            if source is None:
                problem(f"compose: {where}: prometheus must mount /etc/prometheus/redis-targets.yml")
                continue
            groups = yaml.safe_load(open(os.path.join(DEPLOYMENT, source))) or []
            targets = {target for group in groups for target in group.get("targets", [])}
            if targets != {f"{node}:6379" for node in nodes}:
                problem(f"compose: {where}: {source} lists {sorted(targets)}, not the Redis nodes "
                        f"{sorted(nodes)} on port 6379")

    for name in ("api", "invalidator"):
        service = services[name]
        depends = service.get("depends_on", {})
        if not isinstance(depends, dict) or depends.get("migrate", {}).get("condition") != "service_completed_successfully":
            problem(f"compose: {name} must depend on migrate with condition service_completed_successfully")
        if "healthcheck" not in service:
            problem(f"compose: {name} needs a healthcheck")
    # Each binary's environment as docker-compose.yml sets it, and as the cluster variant leaves it
    # (docker-compose.cluster.yml's entries merged over it, as compose merges them).
    for name in ("migrate", "api", "invalidator"):
        env = environment(services[name])
        variants = [(f"compose {name}", env)]
        if name in cluster_services:
            variants.append((f"compose {name} (with docker-compose.cluster.yml)",
                             {**env, **environment(cluster_services[name])}))
        for where, merged in variants:
            check_env(where, merged, known)
            for key in ("DATABASE_URL", "REDIS_URL"):
                if key not in merged:
                    problem(f"{where}: lacks {key}")

    invalidator = services["invalidator"]
    if "container_name" in invalidator:
        problem("compose: invalidator must not set container_name (breaks --scale)")
    if invalidator.get("ports"):
        problem("compose: invalidator must not publish host ports (breaks --scale)")
    for name, service in services.items():
        for port in service.get("ports", []) or []:
            if not str(port).startswith("127.0.0.1:"):
                problem(f"compose: {name} publishes {port} on every interface; bind 127.0.0.1")
    grafana_ports = [str(p) for p in services["grafana"].get("ports", [])]
    if not any(re.search(r"(^|:)3001:3000$", p) for p in grafana_ports):
        problem("compose: grafana must be published on host port 3001")
    mounts = " ".join(str(v) for v in services["grafana"].get("volumes", []))
    if "./grafana/provisioning" not in mounts or "./grafana/dashboards" not in mounts:
        problem("compose: grafana must mount the provisioning and dashboards directories")
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name].get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./") and not os.path.exists(os.path.join(DEPLOYMENT, source)):
                problem(f"compose: {name} mounts {source}, which does not exist")

    dockerfile = os.path.join(DEPLOYMENT, "docker", "Dockerfile")
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", open(dockerfile).read(), re.M))
    for name in ("migrate", "api", "invalidator"):
        build = services[name].get("build", {})
        if os.path.normpath(os.path.join(DEPLOYMENT, build.get("context", ""), build.get("dockerfile", ""))) != dockerfile:
            problem(f"compose: {name} must build deployment/docker/Dockerfile from the repository root")
        if build.get("target") not in targets:
            problem(f"compose: {name} builds unknown target {build.get('target')}")


# ---------------------------------------------------------------- Dockerfile

def check_docker():
    text = open(os.path.join(DEPLOYMENT, "docker", "Dockerfile")).read()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    stages, current = {}, None
    for line in text.splitlines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            current = match.group(2) or match.group(1)
            stages[current] = {"from": match.group(1), "lines": []}
        elif current:
            stages[current]["lines"].append(line)

    def lineage(stage):
        while stage in stages:
            yield stage
            stage = stages[stage]["from"]

    def directive(stage, word):
        return [l for s in lineage(stage) for l in stages[s]["lines"] if l.strip().upper().startswith(word)]

    if not any(s["from"].startswith("rust:") for s in stages.values()):
        problem("Dockerfile: no rust builder stage")
    if "--mount=type=cache" not in text:
        problem("Dockerfile: the build should use cache mounts")
    for target, binary in (("api", "openrisk-api"), ("invalidator", "openrisk-invalidator")):
        if target not in stages:
            problem(f"Dockerfile: target {target} missing")
            continue
        base = list(lineage(target))[-1]
        if "slim" not in stages[base]["from"] and not stages[base]["from"].startswith("debian:"):
            problem(f"Dockerfile: {target} does not run on a slim Debian image")
        users = directive(target, "USER")
        if not users or users[-1].split()[1].split(":")[0] in ("0", "root"):
            problem(f"Dockerfile: {target} must run as a non-root user")
        if not directive(target, "HEALTHCHECK"):
            problem(f"Dockerfile: {target} has no HEALTHCHECK")
        if not any(binary in l for l in directive(target, "COPY")):
            problem(f"Dockerfile: {target} does not copy {binary}")
        if not any("curl" in l for l in directive(target, "RUN")):
            problem(f"Dockerfile: {target} HEALTHCHECK uses curl, which the image does not install")
    ignore_path = os.path.join(ROOT, ".dockerignore")
    ignore = open(ignore_path).read().split() if os.path.exists(ignore_path) else []
    for entry in ("target/", ".git/"):
        if entry not in ignore:
            problem(f".dockerignore must exclude {entry}")


# ---------------------------------------------------------------- Kubernetes

def check_k8s():
    k8s = os.path.join(DEPLOYMENT, "k8s")
    kustomization = yaml.safe_load(open(os.path.join(k8s, "kustomization.yaml")))
    docs = []
    for resource in kustomization.get("resources", []):
        path = os.path.join(k8s, resource)
        if not os.path.exists(path):
            problem(f"k8s: kustomization lists missing {resource}")
            continue
        docs += load_yaml_documents(path)
    # The migration Job is applied on its own, once per release: listed, apply -k would try to
    # change a finished Job's pod template, which Kubernetes refuses.
    if "migrate-job.yaml" in kustomization.get("resources", []):
        problem("k8s: kustomization must not list migrate-job.yaml (a Job's template cannot change)")
    docs += load_yaml_documents(os.path.join(k8s, "migrate-job.yaml"))
    extra = {name: load_yaml_documents(os.path.join(k8s, name)) for name in ("secret.example.yaml", "servicemonitor.yaml")}
    for doc in docs + [d for ds in extra.values() for d in ds]:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in doc:
                problem(f"k8s: a document lacks {key}")
        if doc.get("kind") != "Namespace" and doc.get("metadata", {}).get("namespace") != "openrisk":
            problem(f"k8s: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} is not in namespace openrisk")

    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    known = config_env_names()
    secret = extra["secret.example.yaml"][0]
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    configmaps = by_kind.get("ConfigMap", {})
    for name, cm in configmaps.items():
        check_env(f"k8s ConfigMap {name}", cm.get("data", {}), known)

    def pod_spec(doc):
        return doc["spec"]["template"]["spec"]

    def check_pod(where, spec):
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problem(f"k8s: {where} must run as non-root")
        for container in spec["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            check_env(f"k8s {where}", {k: v for k, v in env.items()}, known)
            for e in container.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and (ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret_keys):
                    problem(f"k8s: {where} reads secret {ref['name']}/{ref['key']}, not in secret.example.yaml")
            for source in container.get("envFrom", []):
                name = source.get("configMapRef", {}).get("name")
                if name and name not in configmaps:
                    problem(f"k8s: {where} reads ConfigMap {name}, which is not defined")
            if not container.get("resources", {}).get("requests"):
                problem(f"k8s: {where} container {container['name']} has no resource requests")
        return spec["containers"][0]

    deployments = by_kind.get("Deployment", {})
    api = deployments.get("openrisk-api")
    inv = deployments.get("openrisk-invalidator")
    if not api or not inv:
        problem("k8s: Deployments openrisk-api and openrisk-invalidator are required")
        return
    c = check_pod("openrisk-api", pod_spec(api))
    if c.get("args", [])[-2:] != ["openrisk-api", "serve"]:
        problem("k8s: the API container must run `openrisk-api serve`")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problem("k8s: API liveness probe must be /healthz")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problem("k8s: API readiness probe must be /readyz")

    c = check_pod("openrisk-invalidator", pod_spec(inv))
    if c.get("args", [])[:2] != ["openrisk-invalidator", "run"]:
        problem("k8s: the invalidator container must run `openrisk-invalidator run`")
    if inv["spec"].get("replicas") != 2:
        problem("k8s: the invalidator runs 2 replicas")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problem("k8s: invalidator readiness probe must be /readyz (caught up)")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problem("k8s: invalidator liveness probe must be /healthz")
    mode = configmaps.get("openrisk-config", {}).get("data", {}).get("OPENRISK_INVALIDATOR__MODE", "listen")
    if inv["spec"]["template"]["metadata"]["labels"].get("wake_mode") != mode:
        problem("k8s: invalidator pod label wake_mode must equal OPENRISK_INVALIDATOR__MODE")

    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            problem(f"k8s: Deployment {name} selector does not match its pod labels")
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        ports = {p["containerPort"] for ct in pod_spec(deployment)["containers"] for p in ct.get("ports", [])}
        if annotations.get("prometheus.io/scrape") != "true" or int(annotations.get("prometheus.io/port", 0)) not in ports:
            problem(f"k8s: Deployment {name} lacks scrape annotations for one of its ports")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
                if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
        if name == "openrisk-invalidator" and not pdbs:
            problem("k8s: the invalidator needs a PodDisruptionBudget")

    services = by_kind.get("Service", {})
    for name, service in services.items():
        targets = [d for d in deployments.values()
                   if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())]
        if not targets:
            problem(f"k8s: Service {name} selects no Deployment")
        for port in service["spec"]["ports"]:
            names = {p.get("name") for d in targets for ct in pod_spec(d)["containers"] for p in ct.get("ports", [])}
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in names:
                problem(f"k8s: Service {name} targets unknown port {port['targetPort']}")
    if "openrisk-api" not in services:
        problem("k8s: Service openrisk-api is required")

    job = by_kind.get("Job", {}).get("openrisk-migrate")
    if not job:
        problem("k8s: Job openrisk-migrate is required")
    else:
        c = check_pod("openrisk-migrate", job["spec"]["template"]["spec"])
        if c.get("args", [])[-1:] != ["migrate"]:
            problem("k8s: the migration Job must run `openrisk-api migrate`")

    for monitor in extra["servicemonitor.yaml"]:
        if monitor.get("kind") != "ServiceMonitor" or monitor.get("apiVersion") != "monitoring.coreos.com/v1":
            problem("k8s: servicemonitor.yaml holds something other than ServiceMonitors")
            continue
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        if len(matched) != 1:
            problem(f"k8s: ServiceMonitor {monitor['metadata']['name']} selects {len(matched)} Services")
            continue
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in port_names:
                problem(f"k8s: ServiceMonitor {monitor['metadata']['name']} scrapes unknown port {endpoint.get('port')}")
        if matched[0]["metadata"]["name"] not in ("openrisk-api", "openrisk-invalidator"):
            problem("k8s: scraped Services must be named after the Prometheus jobs")


# ---------------------------------------------------------------- dashboard

REQUIRED_PANELS = [
    # the old system's six
    "Redis operations rate", "Cache hit ratio", "Redis memory", "PostgreSQL connections",
    "Database query performance", "Query throughput",
    # added
    "Request rate by route", "Latency percentiles by route", "Invalidation lag percentiles",
    "Outbox backlog", "Events processed per replica", "Degraded mode",
]


def dashboard_targets(dashboard):
    for panel in dashboard.get("panels", []):
        for inner in [panel] + panel.get("panels", []):
            for target in inner.get("targets", []):
                yield inner, target


def check_dashboard():
    paths = sorted(glob.glob(os.path.join(DEPLOYMENT, "grafana", "dashboards", "*.json")))
    if not paths:
        problem("dashboard: no JSON under grafana/dashboards")
    provisioning = yaml.safe_load(open(os.path.join(DEPLOYMENT, "grafana", "provisioning", "datasources", "prometheus.yml")))
    datasource_uids = {d.get("uid") for d in provisioning.get("datasources", [])}
    for path in paths:
        name = os.path.basename(path)
        try:
            dashboard = json.load(open(path))
        except ValueError as error:
            problem(f"dashboard {name}: not JSON: {error}")
            continue
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in dashboard:
                problem(f"dashboard {name}: lacks {key}")
        variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
        ds_var = variables.get("datasource", {})
        if ds_var and ds_var.get("current", {}).get("value") not in datasource_uids:
            problem(f"dashboard {name}: default datasource is not the provisioned one")
        ids = [p.get("id") for p in dashboard.get("panels", [])]
        if len(ids) != len(set(ids)) or None in ids:
            problem(f"dashboard {name}: panel ids must be present and unique")
        titles = set()
        for panel in dashboard.get("panels", []):
            titles.add(panel.get("title", ""))
            grid = panel.get("gridPos", {})
            if not all(k in grid for k in ("x", "y", "w", "h")) or grid["x"] + grid["w"] > 24:
                problem(f"dashboard {name}: panel '{panel.get('title')}' has a bad gridPos")
            if panel.get("type") == "row":
                continue
            if not panel.get("targets"):
                problem(f"dashboard {name}: panel '{panel.get('title')}' has no queries")
            refs = [t.get("refId") for t in panel.get("targets", [])]
            if len(refs) != len(set(refs)):
                problem(f"dashboard {name}: panel '{panel.get('title')}' repeats a refId")
            ds = panel.get("datasource", {})
            if ds.get("type") != "prometheus":
                problem(f"dashboard {name}: panel '{panel.get('title')}' is not on the Prometheus datasource")
        for _, target in dashboard_targets(dashboard):
            if not target.get("expr", "").strip():
                problem(f"dashboard {name}: a query has no expression")
        if name == "openrisk.json":
            for title in REQUIRED_PANELS:
                if not any(t.lower().startswith(title.lower()) for t in titles):
                    problem(f"dashboard {name}: no panel titled '{title}'")


def dashboard_promql_rules(out):
    """Writes every dashboard expression as a recording rule so `promtool check rules` parses it."""
    rules = []
    for path in sorted(glob.glob(os.path.join(DEPLOYMENT, "grafana", "dashboards", "*.json"))):
        for index, (panel, target) in enumerate(dashboard_targets(json.load(open(path)))):
            expr = target["expr"]
            for variable in ("$__rate_interval", "$__interval", "${__rate_interval}", "$__range"):
                expr = expr.replace(variable, "5m")
            rules.append({"record": f"dashboard:check_{index}", "expr": expr})
    with open(out, "w") as handle:
        yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, handle)


# ---------------------------------------------------------------- alerts

def github_anchor(heading):
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def alert_rules():
    """Every alerting rule of prometheus/rules/, by alert name (also read by inhibitions.py)."""
    alerts = {}
    for path in sorted(glob.glob(os.path.join(DEPLOYMENT, "prometheus", "rules", "*.yml"))):
        for group in yaml.safe_load(open(path)).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    alerts[rule["alert"]] = rule
    return alerts


def check_alerts():
    docs = open(os.path.join(ROOT, "docs", "operations.md")).read()
    anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.*)$", docs, re.M)}
    alerts = alert_rules()
    if not alerts:
        problem("alerts: no alerting rules found")
    for name, rule in alerts.items():
        if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
            problem(f"alerts: {name} needs severity critical or warning")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problem(f"alerts: {name} lacks the {key} annotation")
        url = annotations.get("runbook_url", "")
        if not url.startswith("docs/operations.md#") or url.split("#", 1)[1] not in anchors:
            problem(f"alerts: {name} runbook_url {url!r} has no matching heading in docs/operations.md")
    # Every alert is tested firing and not firing.
    firing, quiet = set(), set()
    for path in sorted(glob.glob(os.path.join(DEPLOYMENT, "prometheus", "tests", "*.yml"))):
        for test in yaml.safe_load(open(path)).get("tests", []):
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name in sorted(alerts):
        if name not in firing:
            problem(f"alerts: {name} has no unit test where it fires")
        if name not in quiet:
            problem(f"alerts: {name} has no unit test where it stays quiet")
    for name in sorted((firing | quiet) - set(alerts)):
        problem(f"alerts: tests name {name}, which no rule defines")
    # The old system's four must be there.
    for name in ("OpenRiskCacheHitRatioLow", "OpenRiskRedisMemoryHigh", "OpenRiskPostgresConnectionsHigh",
                 "OpenRiskSlowDatabaseQueries"):
        if name not in alerts:
            problem(f"alerts: {name} missing")


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    command = sys.argv[1]
    if command == "compose":
        check_compose()
    elif command == "docker":
        check_docker()
    elif command == "k8s":
        check_k8s()
    elif command == "dashboard":
        check_dashboard()
    elif command == "alerts":
        check_alerts()
    elif command == "dashboard-promql-rules":
        dashboard_promql_rules(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {command}\n{__doc__}")
    for message in problems:
        print(message)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
