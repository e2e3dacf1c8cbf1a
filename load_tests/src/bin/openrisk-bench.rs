//! `openrisk-bench`: the HTTP benchmark of the cache, driven by `load_tests/bench.sh`, which
//! starts everything it talks to (a cached API, an uncached API, the invalidator, the ceiling).
//!
//! Phases, all in one run so that the numbers are comparable (the machine is shared):
//! 1. warm-up: every hot key, list and stats query once through the cached API;
//! 2. saturation (closed loop), interleaved rounds: ceiling, cached and uncached risk detail,
//!    cached and uncached risk list; throughput ratios;
//! 3. fixed offered rate (open loop, coordinated-omission corrected): latency percentiles;
//! 4. the dashboard mix (Zipf over every risk, a few lists, stats) at the fixed rate: hit ratio
//!    from the API's own counters, CPU and RSS from `/proc`, Postgres connections;
//! 5. freshness: writers change titles through SQL and through the API while readers poll; how
//!    long after the commit the API first answers the new title, and reads older than that;
//! 6. with `--cluster-cached`: the same cached risk detail on a Redis Cluster beside the single
//!    node (interleaved saturation rounds), and invalidation lag on each, the cluster's with and
//!    without `WAIT` for a replica (see `bench::topology`).
//!
//! Writes `results.json`, `summary.md` and `latency.svg` into `--out`, prints the checks (no
//! timing assertions, only correctness) and exits non-zero when one failed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hyper::Method;
use openrisk_load_tests::bench::http::{Conn, Req, RunResult, Workload, closed_loop, closed_loop_across, open_loop};
use openrisk_load_tests::bench::plot::{self, PERCENTILES, Panel, Series};
use openrisk_load_tests::bench::procfs::{self, ProcSample};
use openrisk_load_tests::bench::topology::{Lag, LagTarget, measure_lag};
use openrisk_load_tests::bench::zipf::{Sampler, zipf_weights};
use openrisk_load_tests::bench::{prom, redis_cost};
use openrisk_shared::CacheStatus;
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "HTTP benchmark of the OpenRisk cache (see load_tests/bench.sh)")]
struct Args {
    /// The API with the cache on.
    #[arg(long)]
    cached: SocketAddr,
    /// The API with the cache off (`OPENRISK_CACHE__ENABLED=false`).
    #[arg(long)]
    uncached: SocketAddr,
    /// A second cached API (same Redis keys) to A/B against the first, e.g. with another
    /// allocator preloaded; measured at saturation only.
    #[arg(long)]
    cached_alt: Option<SocketAddr>,
    /// Label of `--cached-alt`.
    #[arg(long, default_value = "alternative")]
    cached_alt_label: String,
    #[arg(long, default_value_t = 0)]
    cached_alt_pid: u32,
    /// The ceiling server (`ceiling`).
    #[arg(long)]
    ceiling: SocketAddr,
    /// The invalidator's metrics address.
    #[arg(long)]
    invalidator_metrics: SocketAddr,
    /// `METRICS_ADDR` of the API with the cache on (its /metrics).
    #[arg(long)]
    cached_metrics: SocketAddr,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Redis key the ceiling serves; filled here with a real risk detail.
    #[arg(long, default_value = "bench:ceiling")]
    ceiling_key: String,
    /// File of `<tenant id> <token>` lines (analyst tokens).
    #[arg(long)]
    tokens: PathBuf,
    #[arg(long)]
    api_pid: u32,
    #[arg(long)]
    uncached_pid: u32,
    #[arg(long)]
    invalidator_pid: u32,
    /// The Redis server's pid (for CPU per request); 0 to skip.
    #[arg(long, default_value_t = 0)]
    redis_pid: u32,
    /// The ceiling's pid (for CPU per request); 0 to skip.
    #[arg(long, default_value_t = 0)]
    ceiling_pid: u32,
    /// Record a perf profile of the cached API during the first cached-detail saturation run
    /// (`perf-hit.data` in `--out`).
    #[arg(long)]
    perf: bool,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 8.0)]
    phase_secs: f64,
    /// Saturation rounds (each runs every target once, interleaved).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered rate of the fixed-rate phases, requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Hot risks read by the throughput and fixed-rate phases (the most popular of the Zipf order).
    #[arg(long, default_value_t = 1000)]
    hot: usize,
    /// Zipf exponent of the dashboard mix over all risks.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// List variants (page and page size) one tenant requests before one write invalidates them
    /// all; the API caches at most its entry budget of them.
    #[arg(long, default_value_t = 20_000)]
    variants: u32,
    /// The API's cache key prefix (`cache.key_prefix`).
    #[arg(long, default_value = "bench")]
    key_prefix: String,
    /// Risks whose title the freshness phase keeps changing.
    #[arg(long, default_value_t = 4)]
    fresh_risks: usize,
    #[arg(long, default_value_t = 3)]
    readers_per_risk: usize,
    /// Pause between two writes to one risk, ms.
    #[arg(long, default_value_t = 50)]
    write_interval_ms: u64,
    /// Offered rate of the dashboard mix running in the background of the freshness phase.
    #[arg(long, default_value_t = 500.0)]
    fresh_background_rate: f64,
    /// Background SQL updates per second on other risks during the freshness phase.
    #[arg(long, default_value_t = 100.0)]
    background_writes: f64,
    /// A cached API on a Redis Cluster, on its own database (`--cluster-database-url`, tokens in
    /// `--cluster-tokens`), measured beside `--cached`.
    #[arg(long, requires_all = ["cluster_database_url", "cluster_tokens", "cluster_invalidator_metrics"])]
    cluster_cached: Option<SocketAddr>,
    #[arg(long)]
    cluster_database_url: Option<String>,
    #[arg(long)]
    cluster_tokens: Option<PathBuf>,
    /// The invalidator draining `--cluster-database-url` into the cluster (it waits for a
    /// replica: `REDIS_REPLICAS_ACK` 1).
    #[arg(long)]
    cluster_invalidator_metrics: Option<SocketAddr>,
    /// A database drained into the same cluster by an invalidator with `REDIS_REPLICAS_ACK=0`.
    #[arg(long, requires = "cluster_ack0_invalidator_metrics")]
    cluster_ack0_database_url: Option<String>,
    #[arg(long)]
    cluster_ack0_invalidator_metrics: Option<SocketAddr>,
    /// SQL writes per second of each invalidation lag phase.
    #[arg(long, default_value_t = 50.0)]
    lag_writes: f64,
    /// Also measure saturation with wrk (if installed), as an independent generator.
    #[arg(long)]
    wrk: bool,
    #[arg(long)]
    out: PathBuf,
}

/// A risk and the token of its tenant.
#[derive(Debug, Clone)]
struct RiskRef {
    tenant: Uuid,
    id: Uuid,
    auth: Arc<str>,
}

fn detail(risk: &RiskRef) -> Req {
    Req::get(format!("/api/v1/risks/{}", risk.id), Some(Arc::clone(&risk.auth)))
}

/// List queries a dashboard makes, per tenant.
const LIST_QUERIES: [&str; 6] = [
    "/api/v1/risks?sort_by=score&sort_dir=desc&page=1&limit=20",
    "/api/v1/risks?sort_by=score&sort_dir=desc&page=2&limit=20",
    "/api/v1/risks?status=ACTIVE&sort_by=updated_at&page=1&limit=20",
    "/api/v1/risks?severity=HIGH&sort_by=score&page=1&limit=50",
    "/api/v1/risks?page=1&limit=20",
    "/api/v1/risks?status=DRAFT&page=1&limit=20",
];
const STATS_QUERIES: [&str; 3] = ["/api/v1/stats", "/api/v1/stats/risk-matrix", "/api/v1/stats/trends?days=30"];

/// Outcome of one correctness check.
struct Checks(Vec<(String, bool, String)>);

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        println!(
            "{} {name}{}",
            if ok { "PASS" } else { "FAIL" },
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        );
        self.0.push((name.to_owned(), ok, detail));
    }

    fn run(&mut self, result: &RunResult) {
        self.check(
            &format!("{} ({}) answered every request", result.name, result.mode),
            result.ok > 0 && result.errors == 0 && result.non_2xx == 0,
            format!("ok {} non-2xx {} errors {}", result.ok, result.non_2xx, result.errors),
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let phase = Duration::from_secs_f64(args.phase_secs);
    let mut checks = Checks(Vec::new());
    let mut results = serde_json::Map::new();
    let mut rng = SmallRng::seed_from_u64(42);

    // The data set: every live risk of every tenant we hold a token for.
    let tokens = read_tokens(&args.tokens)?;
    let pg = connect_pg(&args.database_url, "openrisk-bench").await?;
    let mut risks = live_risks(&pg, &tokens).await?;
    if risks.is_empty() {
        bail!("no risks of the tenants in {}", args.tokens.display());
    }
    // The popularity order of the Zipf mix: a fixed shuffle, so hot risks spread over tenants.
    risks.shuffle(&mut rng);
    let tenants: Vec<(Uuid, Arc<str>)> = tokens.iter().map(|(tenant, auth)| (*tenant, Arc::clone(auth))).collect();
    let hot: Vec<RiskRef> = risks.iter().take(args.hot.max(1)).cloned().collect();
    let mut lists: Vec<Req> = tenants
        .iter()
        .flat_map(|(_, auth)| LIST_QUERIES.iter().map(move |path| Req::get(*path, Some(Arc::clone(auth)))))
        .collect();
    lists.shuffle(&mut rng);
    let stats: Vec<Req> = tenants
        .iter()
        .flat_map(|(_, auth)| STATS_QUERIES.iter().map(move |path| Req::get(*path, Some(Arc::clone(auth)))))
        .collect();
    println!(
        "data set: {} risks of {} tenants; {} hot, {} list queries",
        risks.len(),
        tenants.len(),
        hot.len(),
        lists.len()
    );
    results.insert(
        "data_set".into(),
        json!({"tenants": tenants.len(), "risks": risks.len(), "hot_risks": hot.len(), "list_queries": lists.len(), "zipf_s": args.zipf_s}),
    );

    // Warm-up and probes.
    let hot_details: Vec<Req> = hot.iter().map(detail).collect();
    let warm: Vec<Req> = hot_details.iter().chain(&lists).chain(&stats).cloned().collect();
    let failed = touch_all(args.cached, &warm, 16).await?;
    checks.check(
        "warm-up answered 200 for every hot key, list and stats query",
        failed == 0,
        format!("{failed} of {} failed", warm.len()),
    );
    let _ = touch_all(args.uncached, &warm[..warm.len().min(200)], 8).await?;
    let mut probe = Conn::open(args.cached).await?;
    let hit = probe.send(&hot_details[0]).await?;
    checks.check(
        "a warmed risk detail is a cache hit",
        hit.status == 200 && hit.cache_status == Some(CacheStatus::Hit),
        format!("Cache-Status {:?}", hit.cache_status),
    );
    let list_hit = probe.send(&lists[0]).await?;
    let bypass = Conn::open(args.uncached).await?.send(&hot_details[0]).await?;
    checks.check(
        "the uncached API bypasses the cache and answers the same body",
        bypass.status == 200 && bypass.cache_status.is_some_and(CacheStatus::is_bypass) && bypass.body == hit.body,
        format!("Cache-Status {:?}, {} vs {} bytes", bypass.cache_status, bypass.body.len(), hit.body.len()),
    );
    // The ceiling serves a real detail body.
    let mut redis = RedisTarget::parse(&args.redis_url)?.connect(Timeouts::all(Duration::from_secs(10))).await?;
    redis::cmd("SET").arg(&args.ceiling_key).arg(hit.body.as_ref()).exec_async(&mut redis).await?;
    let ceiling_req = Req::get("/ceiling", None);
    let ceiling_answer = Conn::open(args.ceiling).await?.send(&ceiling_req).await?;
    checks.check(
        "the ceiling serves a body of a real risk detail's size",
        ceiling_answer.status == 200 && ceiling_answer.body.len() == hit.body.len(),
        format!(
            "{} bytes, detail {} bytes, list page {} bytes",
            ceiling_answer.body.len(),
            hit.body.len(),
            list_hit.body.len()
        ),
    );
    results.insert("body_bytes".into(), json!({"detail": hit.body.len(), "list": list_hit.body.len()}));
    // And a real list page, so the cached list has a ceiling with its own body size.
    let ceiling_list_key = format!("{}:list", args.ceiling_key);
    redis::cmd("SET").arg(&ceiling_list_key).arg(list_hit.body.as_ref()).exec_async(&mut redis).await?;
    let ceiling_list_req = Req::get("/ceiling/list", None);
    let ceiling_list_answer = Conn::open(args.ceiling).await?.send(&ceiling_list_req).await?;
    checks.check(
        "the ceiling serves a list page's body",
        ceiling_list_answer.status == 200 && ceiling_list_answer.body == list_hit.body,
        format!("{} bytes", ceiling_list_answer.body.len()),
    );
    let ceiling_list = Workload::new("ceiling (list body)", vec![ceiling_list_req], Sampler::Uniform(1));

    let ceiling = Workload::new("ceiling", vec![ceiling_req], Sampler::Uniform(1));
    // The ceiling plus the real protocol lookup (the version-checking MGET) on the same hot risks.
    let lookups: Vec<Req> = hot.iter().map(|r| Req::get(format!("/lookup/{}/{}", r.tenant, r.id), None)).collect();
    let lookup_answer = Conn::open(args.ceiling).await?.send(&lookups[0]).await?;
    checks.check(
        "the ceiling's protocol lookup finds the API's cached entry",
        lookup_answer.status == 200 && lookup_answer.body == hit.body,
        format!("status {}, {} bytes", lookup_answer.status, lookup_answer.body.len()),
    );
    let ceiling_lookup = Workload::new("ceiling + protocol lookup", lookups.clone(), Sampler::Uniform(lookups.len()));
    let cached_detail =
        Workload::new("cached GET /risks/{id}", hot_details.clone(), Sampler::Uniform(hot_details.len()));
    let uncached_detail =
        Workload::new("uncached GET /risks/{id}", hot_details.clone(), Sampler::Uniform(hot_details.len()));
    let cached_list = Workload::new("cached GET /risks?…", lists.clone(), Sampler::Uniform(lists.len()));
    let uncached_list = Workload::new("uncached GET /risks?…", lists.clone(), Sampler::Uniform(lists.len()));
    let alt_name = format!("cached GET /risks/{{id}} ({})", args.cached_alt_label);
    let cached_alt = Workload::new(alt_name.clone(), hot_details.clone(), Sampler::Uniform(hot_details.len()));
    let two_apis_name = "cached GET /risks/{id}, two API processes";
    let cached_two = Workload::new(two_apis_name, hot_details.clone(), Sampler::Uniform(hot_details.len()));
    let mut saturation_targets = vec![
        (vec![args.ceiling], &ceiling),
        (vec![args.ceiling], &ceiling_lookup),
        (vec![args.cached], &cached_detail),
        (vec![args.uncached], &uncached_detail),
        (vec![args.ceiling], &ceiling_list),
        (vec![args.cached], &cached_list),
        (vec![args.uncached], &uncached_list),
    ];
    if let Some(addr) = args.cached_alt {
        let failed = touch_all(addr, &hot_details, 8).await?;
        checks.check(&format!("{alt_name} answers every hot risk"), failed == 0, format!("{failed} failed"));
        saturation_targets.insert(4, (vec![addr], &cached_alt));
        saturation_targets.insert(5, (vec![args.cached, addr], &cached_two));
    }
    let targets = [
        (args.ceiling, &ceiling),
        (args.cached, &cached_detail),
        (args.uncached, &uncached_detail),
        (args.cached, &cached_list),
        (args.uncached, &uncached_list),
    ];

    // Saturation, interleaved rounds.
    println!("== saturation: {} connections, {} round(s) of {:?} per target", args.connections, args.rounds, phase);
    let mut saturation: BTreeMap<String, Vec<RunResult>> = BTreeMap::new();
    /// Where a CPU figure comes from: a process, every `postgres` process, or nothing.
    #[derive(Clone, Copy)]
    enum CpuSource {
        Pid(u32),
        Postgres,
        Skip,
    }
    let pid = |pid: u32| if pid == 0 { CpuSource::Skip } else { CpuSource::Pid(pid) };
    let cpu_processes = [
        ("api (cached)", pid(args.api_pid)),
        ("api (uncached)", pid(args.uncached_pid)),
        ("api (alternative)", pid(args.cached_alt_pid)),
        ("ceiling", pid(args.ceiling_pid)),
        ("redis", pid(args.redis_pid)),
        ("generator (openrisk-bench)", pid(std::process::id())),
        ("postgres (all backends, shared server)", CpuSource::Postgres),
    ];
    let cpu_now = || -> Vec<u64> {
        cpu_processes
            .iter()
            .map(|(_, source)| match source {
                CpuSource::Pid(pid) => procfs::cpu_ticks(*pid),
                CpuSource::Postgres => procfs::cpu_ticks_of_command("postgres"),
                CpuSource::Skip => 0,
            })
            .collect()
    };
    // Per target: CPU ticks per process, requests answered, machine busy and total ticks.
    let mut cpu: BTreeMap<String, (Vec<u64>, u64, u64, u64)> = BTreeMap::new();
    // Per target: what its requests cost inside Redis, summed over every command they sent.
    let mut redis_cost: BTreeMap<String, redis_cost::CommandStats> = BTreeMap::new();
    for round in 0..args.rounds {
        for (addrs, workload) in &saturation_targets {
            let profile = (args.perf && round == 0 && workload.name == "cached GET /risks/{id}").then(|| {
                tokio::process::Command::new("perf")
                    .args(["record", "-F", "999", "-p", &args.api_pid.to_string(), "-o"])
                    .arg(args.out.join("perf-hit.data"))
                    .args(["--", "sleep", &format!("{}", args.phase_secs)])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .ok()
            });
            redis_cost::reset(&mut redis).await?;
            let (cpu_before, machine_before) = (cpu_now(), procfs::machine_ticks());
            let result = closed_loop_across(addrs, Arc::clone(workload), args.connections, phase).await?;
            let (cpu_after, machine_after) = (cpu_now(), procfs::machine_ticks());
            redis_cost.entry(result.name.clone()).or_default().add(&redis_cost::read(&mut redis).await?);
            if let Some(Some(mut child)) = profile {
                let _ = child.wait().await;
            }
            let entry = cpu.entry(result.name.clone()).or_insert_with(|| (vec![0; cpu_processes.len()], 0, 0, 0));
            for (index, (after, before)) in cpu_after.iter().zip(&cpu_before).enumerate() {
                entry.0[index] += after.saturating_sub(*before);
            }
            entry.1 += result.ok;
            entry.2 += machine_after.0.saturating_sub(machine_before.0);
            entry.3 += machine_after.1.saturating_sub(machine_before.1);
            println!(
                "  round {round} {:<28} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
                result.name,
                result.throughput(),
                result.ms(50.0),
                result.ms(99.0)
            );
            checks.run(&result);
            saturation.entry(result.name.clone()).or_default().push(result);
        }
    }
    let rps = |name: &str| -> f64 {
        let runs = &saturation[name];
        runs.iter().map(RunResult::throughput).sum::<f64>() / runs.len() as f64
    };
    let ratios = json!({
        "cached_detail_over_ceiling": rps("cached GET /risks/{id}") / rps("ceiling"),
        "ceiling_lookup_over_ceiling": rps("ceiling + protocol lookup") / rps("ceiling"),
        "cached_detail_over_ceiling_lookup": rps("cached GET /risks/{id}") / rps("ceiling + protocol lookup"),
        "cached_detail_over_uncached": rps("cached GET /risks/{id}") / rps("uncached GET /risks/{id}"),
        "cached_list_over_ceiling": rps("cached GET /risks?…") / rps("ceiling"),
        "cached_list_over_ceiling_list": rps("cached GET /risks?…") / rps("ceiling (list body)"),
        "two_apis_over_one": saturation.contains_key(two_apis_name).then(|| rps(two_apis_name) / rps("cached GET /risks/{id}")),
        "cached_list_over_uncached": rps("cached GET /risks?…") / rps("uncached GET /risks?…"),
        "alternative_over_cached_detail": saturation.contains_key(&alt_name).then(|| rps(&alt_name) / rps("cached GET /risks/{id}")),
    });
    println!("  ratios: {ratios}");
    // What each target's requests cost inside Redis, and what that makes one Redis core's
    // ceiling in answered requests per second.
    let commandstats: serde_json::Map<String, Value> = redis_cost
        .iter()
        .map(|(name, stats)| {
            let answered = saturation[name].iter().map(|run| run.ok).sum::<u64>();
            let mut cost = stats.to_json(answered);
            let per_request = stats.usec_per_request(answered);
            cost["requests_per_redis_core_second"] = json!((per_request > 0.0).then(|| 1e6 / per_request));
            println!("  redis µs per request, {name}: {per_request:.3}");
            (name.clone(), cost)
        })
        .collect();
    let cpu_per_request: serde_json::Map<String, Value> = cpu
        .iter()
        .map(|(name, (ticks, ok, busy, total))| {
            let per_process: serde_json::Map<String, Value> = cpu_processes
                .iter()
                .zip(ticks)
                .filter(|(_, t)| **t > 0)
                .map(|((process, _), t)| {
                    ((*process).to_owned(), json!(*t as f64 * procfs::MICROS_PER_TICK / (*ok).max(1) as f64))
                })
                .collect();
            let machine_busy = if *total > 0 { *busy as f64 / *total as f64 * 100.0 } else { 0.0 };
            println!("  CPU µs per request, {name}: {per_process:?}; machine busy {machine_busy:.0} %");
            (name.clone(), json!({"cpu_us_per_request": per_process, "machine_busy_percent": machine_busy}))
        })
        .collect();
    results.insert(
        "saturation".into(),
        json!({
            "connections": args.connections,
            "runs": saturation.values().flatten().map(RunResult::summary).collect::<Vec<_>>(),
            "mean_rps": saturation.keys().map(|name| (name.clone(), json!(rps(name)))).collect::<serde_json::Map<_, _>>(),
            "ratios": ratios,
            "cpu": cpu_per_request,
            "redis_commandstats": commandstats,
        }),
    );
    if args.wrk {
        let wrk_results = run_wrk(&args, &hot_details).await;
        results.insert("wrk".into(), wrk_results);
    }

    // Fixed offered rate.
    println!("== fixed rate: {} req/s over {} connections, {:?} per target", args.rate, args.connections, phase);
    let mut fixed = Vec::new();
    for (addr, workload) in &targets {
        let result = open_loop(*addr, Arc::clone(workload), args.connections, args.rate, phase).await?;
        print_fixed(&result);
        checks.run(&result);
        fixed.push(result);
    }

    // The dashboard mix: Zipf over every risk, lists, stats.
    let mut mix_reqs: Vec<Req> = risks.iter().map(detail).collect();
    let mut weights: Vec<f64> = zipf_weights(risks.len(), args.zipf_s).into_iter().map(|w| w * 0.85).collect();
    let list_weights = zipf_weights(lists.len(), args.zipf_s);
    let list_total: f64 = list_weights.iter().sum();
    let detail_total: f64 = weights.iter().sum();
    mix_reqs.extend(lists.iter().cloned());
    weights.extend(list_weights.iter().map(|w| w / list_total * 0.10 / 0.85 * detail_total));
    mix_reqs.extend(stats.iter().cloned());
    weights.extend(stats.iter().map(|_| 0.05 / 0.85 * detail_total / stats.len() as f64));
    let mix = Workload::new("dashboard mix (cached)", mix_reqs, Sampler::from_weights(&weights));
    // The warm-up read the hot risks (the first of the popularity order), every list and stats query.
    mix.mark_seen((0..hot.len()).chain(risks.len()..risks.len() + lists.len() + stats.len()));
    println!(
        "== dashboard mix at {} req/s: {:?} from the warm-up state, then {:?} measured",
        args.rate,
        phase,
        phase * 2
    );
    let metrics_before = scrape(args.cached_metrics).await?;
    let cold = open_loop(args.cached, Arc::clone(&mix), args.connections, args.rate, phase).await?;
    checks.run(&cold);
    let metrics_warm = scrape(args.cached_metrics).await?;
    let sampler = Sampler2::start(&args);
    let mut steady = open_loop(args.cached, Arc::clone(&mix), args.connections, args.rate, phase * 2).await?;
    let (resources, connections) = sampler.stop().await;
    let metrics_after = scrape(args.cached_metrics).await?;
    checks.run(&steady);
    print_fixed(&steady);
    let internals = json!({
        "redis_ms": histograms_by_label(&metrics_warm, &metrics_after, "openrisk_redis_command_duration_seconds", "operation"),
        "db_ms": histograms_by_label(&metrics_warm, &metrics_after, "openrisk_db_query_duration_seconds", "query"),
        "http_ms": histograms_by_label(&metrics_warm, &metrics_after, "openrisk_http_request_duration_seconds", "route"),
    });
    println!("  inside the API (from its histograms): {internals}");
    let hit_cold = hit_ratio(&metrics_before, &metrics_warm, cold.first_time);
    let hit_steady = hit_ratio(&metrics_warm, &metrics_after, steady.first_time);
    let pc = |v: &Value, key: &str| v[key].as_f64().unwrap_or(0.0) * 100.0;
    println!(
        "  hit ratio: first {:?} {:.2} % ({:.2} % of repeat requests), then {:.2} % ({:.2} % of repeat requests; {} first-time keys)",
        phase,
        pc(&hit_cold, "ratio"),
        pc(&hit_cold, "ratio_of_repeat_requests"),
        pc(&hit_steady, "ratio"),
        pc(&hit_steady, "ratio_of_repeat_requests"),
        steady.first_time
    );
    println!("  resources: {resources}");
    println!("  postgres connections: {connections}");
    checks.check(
        "the mix was served from the cache",
        hit_steady["hit"].as_f64().unwrap_or(0.0) > 0.0,
        format!("{hit_steady}"),
    );
    steady.name = "dashboard mix (cached)".into();
    results.insert(
        "dashboard_mix".into(),
        json!({
            "rate": args.rate,
            "zipf_s": args.zipf_s,
            "first_phase": cold.summary(),
            "measured": steady.summary(),
            "hit_ratio_first_phase": hit_cold,
            "hit_ratio_measured": hit_steady,
            "resources": resources,
            "postgres_connections": connections,
            "api_internals": internals,
        }),
    );
    fixed.push(steady);
    results.insert("fixed_rate".into(), json!({"rate": args.rate, "connections": args.connections, "runs": fixed.iter().map(RunResult::summary).collect::<Vec<_>>()}));

    // Freshness under writes.
    println!(
        "== freshness: {} risks, {} readers each, a write every {} ms per risk, {} background writes/s, mix at {}/s, {:?}",
        args.fresh_risks,
        args.readers_per_risk,
        args.write_interval_ms,
        args.background_writes,
        args.fresh_background_rate,
        phase * 2
    );
    let invalidator_before = scrape(args.invalidator_metrics).await.unwrap_or_default();
    let sampler = Sampler2::start(&args);
    let freshness = freshness(&args, &pg, &risks, Arc::clone(&mix), phase * 2).await?;
    let (fresh_resources, fresh_connections) = sampler.stop().await;
    let invalidator_after = scrape(args.invalidator_metrics).await.unwrap_or_default();
    let lag = prom::bucket_delta(
        &prom::buckets(&invalidator_before, "openrisk_invalidator_lag_seconds"),
        &prom::buckets(&invalidator_after, "openrisk_invalidator_lag_seconds"),
    );
    let lag_ms = |q| prom::quantile(&lag, q).map(|s| s * 1000.0);
    let events = prom::sum(&invalidator_after, "openrisk_invalidator_events_processed_total", &[])
        - prom::sum(&invalidator_before, "openrisk_invalidator_events_processed_total", &[]);
    checks.run(&freshness.background);
    checks.check(
        "every write was committed and then seen by a reader",
        freshness.writes_sql > 0
            && freshness.writes_api > 0
            && freshness.write_errors == 0
            && freshness.never_seen == 0,
        format!(
            "{} SQL + {} API writes, {} errors, {} never seen",
            freshness.writes_sql, freshness.writes_api, freshness.write_errors, freshness.never_seen
        ),
    );
    checks.check(
        "no read returned a value older than the staleness window",
        freshness.older_than_window == 0 && freshness.read_errors == 0 && freshness.reads > 0,
        format!(
            "{} reads, {} older than the window, {} errors",
            freshness.reads, freshness.older_than_window, freshness.read_errors
        ),
    );
    let window =
        |v: &[f64]| json!({"count": v.len(), "p50_ms": pct(v, 50.0), "p99_ms": pct(v, 99.0), "max_ms": pct(v, 100.0)});
    results.insert(
        "freshness".into(),
        json!({
            "duration_s": (phase * 2).as_secs_f64(),
            "window_sql": window(&freshness.windows_sql),
            "window_api": window(&freshness.windows_api),
            "window_sql_lower_bound": window(&freshness.lower_sql),
            "window_api_lower_bound": window(&freshness.lower_api),
            "reads": freshness.reads,
            "read_latency_ms": window(&freshness.read_ms),
            "stale_reads_inside_window": freshness.stale_inside_window,
            "stale_reads_by_cause": freshness.stale_by_cause,
            "older_reads_by_cause": freshness.older_by_cause,
            "reads_older_than_window": freshness.older_than_window,
            "never_seen": freshness.never_seen,
            "background_reads": freshness.background.summary(),
            "background_sql_writes": freshness.background_writes,
            "invalidator_events": events,
            "invalidator_lag_ms": {"p50": lag_ms(0.5), "p99": lag_ms(0.99), "max_at_most": lag.last().and_then(|(_, total)| lag.iter().find(|(_, c)| c >= total && *total > 0.0)).map(|(le, _)| le * 1000.0).filter(|v| v.is_finite())},
            "resources": fresh_resources,
            "postgres_connections": fresh_connections,
        }),
    );
    println!(
        "  window after commit: SQL p50 {:.2} p99 {:.2} max {:.2} ms; API p50 {:.2} p99 {:.2} max {:.2} ms; {} stale reads inside windows, {} older than the window",
        pct(&freshness.windows_sql, 50.0),
        pct(&freshness.windows_sql, 99.0),
        pct(&freshness.windows_sql, 100.0),
        pct(&freshness.windows_api, 50.0),
        pct(&freshness.windows_api, 99.0),
        pct(&freshness.windows_api, 100.0),
        freshness.stale_inside_window,
        freshness.older_than_window
    );
    println!(
        "  lower bounds (last stale read sent after commit): SQL p50 {:.2} p99 {:.2} max {:.2} ms; API p50 {:.2} p99 {:.2} max {:.2} ms",
        pct(&freshness.lower_sql, 50.0),
        pct(&freshness.lower_sql, 99.0),
        pct(&freshness.lower_sql, 100.0),
        pct(&freshness.lower_api, 50.0),
        pct(&freshness.lower_api, 99.0),
        pct(&freshness.lower_api, 100.0)
    );
    println!(
        "  polling reads: p50 {:.2} p99 {:.2} max {:.2} ms",
        pct(&freshness.read_ms, 50.0),
        pct(&freshness.read_ms, 99.0),
        pct(&freshness.read_ms, 100.0)
    );
    println!("  stale reads inside windows by cause: {:?}", freshness.stale_by_cause);
    if !freshness.older_by_cause.is_empty() {
        println!("  reads older than the window by cause: {:?}", freshness.older_by_cause);
    }
    println!("  invalidator: {events} events, lag p50 {:?} ms p99 {:?} ms", lag_ms(0.5), lag_ms(0.99));

    // Plot and files.
    let mut latency_series: Vec<Series> = fixed
        .iter()
        .map(|r| Series {
            name: r.name.clone(),
            points: PERCENTILES
                .iter()
                .map(|&p| (p, (r.latency.value_at_percentile(p) as f64 / 1000.0).max(0.001)))
                .collect(),
        })
        .collect();
    latency_series.push(Series {
        name: format!("mix under writes ({}/s)", args.fresh_background_rate),
        points: PERCENTILES
            .iter()
            .map(|&p| (p, (freshness.background.latency.value_at_percentile(p) as f64 / 1000.0).max(0.001)))
            .collect(),
    });
    let window_series = |name: &str, v: &[f64]| Series {
        name: name.into(),
        points: PERCENTILES.iter().map(|&p| (p, pct(v, p).max(0.01))).collect(),
    };
    let svg = plot::render(
        &format!(
            "OpenRisk cache: {} req/s offered over {} connections (2 cores, generator on the same machine)",
            args.rate, args.connections
        ),
        &[
            Panel {
                title: "Latency at a fixed offered rate (coordinated-omission corrected)".into(),
                y_label: "latency, ms".into(),
                series: latency_series,
            },
            Panel {
                title: "Staleness window: commit to the first read of the new value".into(),
                y_label: "ms after commit".into(),
                series: vec![
                    window_series("SQL write: first fresh answer", &freshness.windows_sql),
                    window_series("SQL write: last stale read sent", &freshness.lower_sql),
                    window_series("API write: first fresh answer", &freshness.windows_api),
                    window_series("API write: last stale read sent", &freshness.lower_api),
                ],
            },
        ],
    );
    std::fs::write(args.out.join("latency.svg"), svg)?;
    let variants = many_variants(&args, &tenants[0], &risks, &pg, &mut redis, &mut checks).await?;
    results.insert("many_variants".into(), variants);
    if let Some(cluster) = args.cluster_cached {
        let topology = node_beside_cluster(&args, cluster, &cached_detail, &mut checks).await?;
        results.insert("topology".into(), topology);
    }
    let passed = checks.0.iter().filter(|c| c.1).count();
    let failed = checks.0.len() - passed;
    results.insert(
        "checks".into(),
        json!(
            checks
                .0
                .iter()
                .map(|(name, ok, detail)| json!({"name": name, "ok": ok, "detail": detail}))
                .collect::<Vec<_>>()
        ),
    );
    let results = Value::Object(results);
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    std::fs::write(args.out.join("summary.md"), summary_markdown(&results))?;
    println!("wrote {}/results.json, summary.md, latency.svg", args.out.display());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The same cached risk detail through an API on the single node and one on the cluster, in
/// interleaved saturation rounds; then invalidation lag of the node's invalidator, the cluster's
/// (waiting for a replica) and, with `--cluster-ack0-database-url`, the cluster's without.
async fn node_beside_cluster(
    args: &Args,
    cluster: SocketAddr,
    node_detail: &Arc<Workload>,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let phase = Duration::from_secs_f64(args.phase_secs);
    let (Some(database_url), Some(tokens), Some(metrics)) =
        (&args.cluster_database_url, &args.cluster_tokens, args.cluster_invalidator_metrics)
    else {
        bail!("--cluster-cached needs --cluster-database-url, --cluster-tokens and --cluster-invalidator-metrics");
    };
    let tokens = read_tokens(tokens)?;
    let pg = connect_pg(database_url, "openrisk-bench").await?;
    let mut risks = live_risks(&pg, &tokens).await?;
    risks.shuffle(&mut SmallRng::seed_from_u64(42));
    let hot: Vec<Req> = risks.iter().take(node_detail.reqs.len()).map(detail).collect();
    anyhow::ensure!(!hot.is_empty(), "no risks of the tenants in the cluster's tokens file");
    println!("== node beside cluster: {} hot risks on each, {} round(s) of {phase:?}", hot.len(), args.rounds);
    let failed = touch_all(cluster, &hot, 16).await?;
    let answer = Conn::open(cluster).await?.send(&hot[0]).await?;
    checks.check(
        "the cluster's API answers every hot risk and serves them from the cache",
        failed == 0 && answer.status == 200 && answer.cache_status == Some(CacheStatus::Hit),
        format!("{failed} of {} failed; Cache-Status {:?}", hot.len(), answer.cache_status),
    );
    let cluster_detail =
        Workload::new("cached GET /risks/{id} on the cluster", hot.clone(), Sampler::Uniform(hot.len()));
    let (mut node_rps, mut cluster_rps) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for (addr, workload, into) in
            [(args.cached, node_detail, &mut node_rps), (cluster, &cluster_detail, &mut cluster_rps)]
        {
            let result = closed_loop(addr, Arc::clone(workload), args.connections, phase).await?;
            println!(
                "  round {round} {:<40} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
                result.name,
                result.throughput(),
                result.ms(50.0),
                result.ms(99.0)
            );
            checks.run(&result);
            into.push(result.throughput());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;

    let mut targets = Vec::new();
    let node_pg = connect_pg(&args.database_url, "openrisk-bench-lag").await?;
    targets.push(LagTarget {
        name: "node".into(),
        risks: lag_risks(&node_pg).await?,
        pg: node_pg,
        metrics: args.invalidator_metrics,
    });
    targets.push(LagTarget { name: "cluster, WAIT 1".into(), risks: lag_risks(&pg).await?, pg, metrics });
    if let (Some(url), Some(metrics)) = (&args.cluster_ack0_database_url, args.cluster_ack0_invalidator_metrics) {
        let pg = connect_pg(url, "openrisk-bench-lag").await?;
        targets.push(LagTarget { name: "cluster, no WAIT".into(), risks: lag_risks(&pg).await?, pg, metrics });
    }
    let interval = Duration::from_secs_f64(1.0 / args.lag_writes.max(0.1));
    println!("== invalidation lag: {} writes/s for {phase:?} per target and round", args.lag_writes);
    let mut lags: Vec<Lag> = vec![Lag::default(); targets.len()];
    for _ in 0..args.rounds {
        for (target, lag) in targets.iter().zip(&mut lags) {
            measure_lag(target, phase, interval, lag).await?;
        }
    }
    let mut lag_json = serde_json::Map::new();
    for (target, lag) in targets.iter().zip(&lags) {
        println!(
            "  {:<18} {} writes, {} events: lag p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
            target.name,
            lag.writes,
            lag.events,
            lag.ms(0.5).unwrap_or(f64::NAN),
            lag.ms(0.9).unwrap_or(f64::NAN),
            lag.ms(0.99).unwrap_or(f64::NAN)
        );
        checks.check(
            &format!("invalidation lag ({}): every write was invalidated and the outbox drained", target.name),
            lag.writes > 0 && lag.events >= lag.writes as f64 && lag.undrained == 0,
            format!("{} writes, {} events, {} rounds not drained", lag.writes, lag.events, lag.undrained),
        );
        lag_json.insert(target.name.clone(), lag.to_json());
    }
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let ratios = json!({
        "cluster_over_node_cached_detail_rps": mean(&cluster_rps) / mean(&node_rps),
        "cluster_over_node_lag_p50": ratio(lags[1].ms(0.5), lags[0].ms(0.5)),
        "cluster_over_node_lag_p99": ratio(lags[1].ms(0.99), lags[0].ms(0.99)),
        "wait_over_no_wait_lag_p50": lags.get(2).and_then(|no_wait| ratio(lags[1].ms(0.5), no_wait.ms(0.5))),
        "wait_over_no_wait_lag_p99": lags.get(2).and_then(|no_wait| ratio(lags[1].ms(0.99), no_wait.ms(0.99))),
    });
    println!("  ratios: {ratios}");
    Ok(json!({
        "cached_detail_rps": {"node": node_rps, "cluster": cluster_rps, "node_mean": mean(&node_rps), "cluster_mean": mean(&cluster_rps)},
        "invalidation_lag": lag_json,
        "lag_writes_per_second": args.lag_writes,
        "ratios": ratios,
    }))
}

/// A few live risks of a database for the lag phase to write to.
async fn lag_risks(pg: &tokio_postgres::Client) -> anyhow::Result<Vec<Uuid>> {
    let rows = pg.query("SELECT id FROM risks WHERE deleted_at IS NULL ORDER BY id LIMIT 8", &[]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// One viewer caches `--variants` pages of one list, then one SQL write invalidates them all:
/// how long the longest single Redis command took (every tenant waits for it), what the whole
/// invalidation and its reclaiming cost inside Redis, and that no page is served stale.
async fn many_variants(
    args: &Args,
    (tenant, auth): &(Uuid, Arc<str>),
    risks: &[RiskRef],
    pg: &tokio_postgres::Client,
    redis: &mut RedisConnection,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let Some(risk) = risks.iter().find(|risk| risk.tenant == *tenant) else { bail!("tenant {tenant} has no risk") };
    println!("== many variants: {} pages of one list, then one SQL write", args.variants);
    // Cacheable variants (pages past 10 are never cached): every page up to 10 of every page size.
    // The API stores at most `cache.max_entries_per_route` of them per tenant; the rest bypass.
    let pages: Vec<Req> = (0..args.variants)
        .map(|i| {
            let (page, limit) = (1 + i % 10, 1 + (i / 10) % 200);
            Req::get(format!("/api/v1/risks?page={page}&limit={limit}"), Some(Arc::clone(auth)))
        })
        .collect();
    let started = Instant::now();
    let failed = touch_all(args.cached, &pages, 16).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    let members_key = openrisk_shared::Keyspace::new(args.key_prefix.clone())
        .members_key(*tenant, &openrisk_shared::Tag::parse("risks")?);
    let members: u64 = redis::cmd("SCARD").arg(&members_key).query_async(redis).await?;
    let keys_before = redis_cost::keys(redis).await?;
    redis_cost::record_every_command(redis).await?;
    redis_cost::reset(redis).await?;
    pg.execute("UPDATE risks SET description = md5(random()::text) WHERE id = $1", &[&risk.id]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keys_after = keys_before;
    while Instant::now() < deadline {
        let pending: i64 = pg.query_one("SELECT count(*) FROM cache_outbox", &[]).await?.get(0);
        keys_after = redis_cost::keys(redis).await?;
        if pending == 0 && keys_before.saturating_sub(keys_after) >= members {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spent = redis_cost::read(redis).await?;
    let (longest_us, longest_command, logged) = redis_cost::longest_command(redis).await?;
    let first_page = Conn::open(args.cached).await?.send(&pages[0]).await?;
    checks.check(
        "the list variants were cached, up to the tenant's entry budget (cache.max_entries_per_route)",
        failed == 0 && members > 0 && members <= u64::from(args.variants),
        format!("{failed} failed, {members} entries under the collection tag"),
    );
    checks.check(
        "one write made every variant unreadable and reclaimed them",
        first_page.cache_status.is_some_and(CacheStatus::is_miss) && keys_before.saturating_sub(keys_after) >= members,
        format!("keys {keys_before} → {keys_after}, first page {:?}", first_page.cache_status),
    );
    println!(
        "  {members} variants cached in {fill_secs:.1} s; longest Redis command during the invalidation \
         {longest_us} µs ({longest_command}); Redis time for the whole write {:.0} µs over {logged} commands",
        spent.usec_per_request(1)
    );
    Ok(json!({
        "variants": members,
        "fill_seconds": fill_secs,
        "longest_command_us": longest_us,
        "longest_command": longest_command,
        "commands_logged": logged,
        "redis": spent.to_json(1),
        "keys_before": keys_before,
        "keys_after": keys_after,
    }))
}

/// Every live risk of every tenant in `tokens`, in id order, with its tenant's token.
async fn live_risks(pg: &tokio_postgres::Client, tokens: &HashMap<Uuid, Arc<str>>) -> anyhow::Result<Vec<RiskRef>> {
    let rows = pg.query("SELECT tenant_id, id FROM risks WHERE deleted_at IS NULL ORDER BY tenant_id, id", &[]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let tenant: Uuid = row.get(0);
            tokens.get(&tenant).map(|auth| RiskRef { tenant, id: row.get(1), auth: Arc::clone(auth) })
        })
        .collect())
}

fn read_tokens(path: &PathBuf) -> anyhow::Result<HashMap<Uuid, Arc<str>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (tenant, token) = line.trim().split_once(char::is_whitespace).context("expected `<tenant> <token>`")?;
            Ok((tenant.parse()?, Arc::from(format!("Bearer {}", token.trim()))))
        })
        .collect()
}

async fn connect_pg(url: &str, name: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(name);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Sends every request once over `connections` connections; returns how many were not 200.
async fn touch_all(addr: SocketAddr, reqs: &[Req], connections: usize) -> anyhow::Result<usize> {
    let chunk = reqs.len().div_ceil(connections.max(1)).max(1);
    let tasks: Vec<_> = reqs
        .chunks(chunk)
        .map(|part| {
            let part = part.to_vec();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await?;
                let mut failed = 0;
                for req in &part {
                    if conn.send_retrying(req).await.map(|a| a.status).unwrap_or(0) != 200 {
                        failed += 1;
                    }
                }
                anyhow::Ok(failed)
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await??;
    }
    Ok(failed)
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<prom::PromSample>> {
    let answer = Conn::open(addr).await?.send(&Req::get("/metrics", None)).await?;
    if answer.status != 200 {
        bail!("GET {addr}/metrics answered {}", answer.status);
    }
    Ok(prom::parse(&String::from_utf8_lossy(&answer.body)))
}

/// Count, p50 and p99 (ms) of a histogram per value of `label`, between two scrapes.
fn histograms_by_label(before: &[prom::PromSample], after: &[prom::PromSample], name: &str, label: &str) -> Value {
    let bucket_name = format!("{name}_bucket");
    let mut values: Vec<String> =
        after.iter().filter(|s| s.name == bucket_name).filter_map(|s| s.labels.get(label).cloned()).collect();
    values.sort();
    values.dedup();
    let map: serde_json::Map<String, Value> = values
        .into_iter()
        .filter_map(|value| {
            let filter = [(label, value.as_str())];
            let delta = prom::bucket_delta(
                &prom::buckets_where(before, name, &filter),
                &prom::buckets_where(after, name, &filter),
            );
            let count = delta.last().map_or(0.0, |(_, c)| *c);
            (count > 0.0).then(|| {
                let q = |q| prom::quantile(&delta, q).map(|s| s * 1000.0);
                (value, json!({"count": count, "p50": q(0.5), "p99": q(0.99)}))
            })
        })
        .collect();
    Value::Object(map)
}

/// Hit ratio between two scrapes of the API: hits over all cacheable GETs, overall and by route;
/// and hits over the requests for keys requested before (`first_time` requests are compulsory
/// misses: no cache can hold a key nobody asked for yet).
fn hit_ratio(before: &[prom::PromSample], after: &[prom::PromSample], first_time: u64) -> Value {
    const NAME: &str = "openrisk_cache_requests_total";
    let delta = |filter: &[(&str, &str)]| prom::sum(after, NAME, filter) - prom::sum(before, NAME, filter);
    let mut routes: Vec<String> =
        after.iter().filter(|s| s.name == NAME).filter_map(|s| s.labels.get("route").cloned()).collect();
    routes.sort();
    routes.dedup();
    let by_route: serde_json::Map<String, Value> = routes
        .iter()
        .map(|route| {
            let total = delta(&[("route", route)]);
            let hit = delta(&[("route", route), ("result", "hit")]);
            (
                route.clone(),
                json!({"requests": total, "hit": hit, "ratio": if total > 0.0 { hit / total } else { 0.0 }}),
            )
        })
        .collect();
    let total = delta(&[]);
    let hit = delta(&[("result", "hit")]);
    json!({
        "requests": total,
        "hit": hit,
        "miss": delta(&[("result", "miss")]),
        "bypass": delta(&[("result", "bypass")]),
        "error": delta(&[("result", "error")]),
        "ratio": if total > 0.0 { hit / total } else { 0.0 },
        "first_time_requests": first_time,
        "ratio_of_repeat_requests": if total > first_time as f64 { hit / (total - first_time as f64) } else { 0.0 },
        "by_route": by_route,
    })
}

fn print_fixed(result: &RunResult) {
    println!(
        "  {:<28} offered {:>6.0}/s achieved {:>7.0}/s  mean {:.2}  p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2} ms",
        result.name,
        result.offered_rate.unwrap_or(0.0),
        result.throughput(),
        result.latency.mean() / 1000.0,
        result.ms(50.0),
        result.ms(95.0),
        result.ms(99.0),
        result.ms(100.0)
    );
}

/// Exact percentile of unsorted values (0 when empty).
fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Samples `/proc` of the three processes and `pg_stat_activity` until stopped.
struct Sampler2 {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Value, Value)>,
}

impl Sampler2 {
    fn start(args: &Args) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut pids = vec![
            ("api (cached)", args.api_pid),
            ("api (uncached)", args.uncached_pid),
            ("invalidator", args.invalidator_pid),
        ];
        if args.cached_alt_pid != 0 {
            pids.push(("api (alternative, idle here)", args.cached_alt_pid));
        }
        let url = args.database_url.clone();
        let pg_port =
            url.parse::<tokio_postgres::Config>().ok().and_then(|c| c.get_ports().first().copied()).unwrap_or(5432);
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let pg = connect_pg(&url, "openrisk-bench-sampler").await.ok();
            let mut samples: Vec<Vec<ProcSample>> = vec![Vec::new(); pids.len()];
            // Established TCP connections of each process to the Postgres port (from /proc/net/tcp).
            let mut pg_conns_max: Vec<usize> = vec![0; pids.len()];
            let (mut max_total, mut at_max, mut max_by_app) = (0i64, BTreeMap::new(), BTreeMap::<String, i64>::new());
            let query = "SELECT coalesce(nullif(application_name, ''), '(unnamed)'), count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid() \
                         AND application_name NOT LIKE 'openrisk-bench%' GROUP BY 1";
            while !flag.load(Ordering::Relaxed) {
                for (index, (_, pid)) in pids.iter().enumerate() {
                    if let Some(sample) = procfs::sample(*pid) {
                        samples[index].push(sample);
                    }
                    if let Some(count) = procfs::tcp_connections_to(*pid, pg_port) {
                        pg_conns_max[index] = pg_conns_max[index].max(count);
                    }
                }
                if let Some(pg) = &pg
                    && let Ok(rows) = pg.query(query, &[]).await
                {
                    let now: BTreeMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
                    let total: i64 = now.values().sum();
                    for (app, count) in &now {
                        let entry = max_by_app.entry(app.clone()).or_default();
                        *entry = (*entry).max(*count);
                    }
                    if total > max_total {
                        (max_total, at_max) = (total, now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let resources: serde_json::Map<String, Value> = pids
                .iter()
                .zip(&samples)
                .map(|((name, _), samples)| {
                    let usage = procfs::usage(samples).unwrap_or_default();
                    ((*name).to_owned(), json!({"cpu_percent_of_one_core": usage.cpu_percent, "rss_max_mib": usage.rss_max_mib, "rss_last_mib": usage.rss_last_mib}))
                })
                .collect();
            (
                Value::Object(resources),
                json!({
                    "max_total": max_total,
                    "at_max": at_max,
                    "max_by_application": max_by_app,
                    "max_by_process": pids.iter().zip(&pg_conns_max).map(|((name, _), n)| ((*name).to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                }),
            )
        });
        Self { stop, task }
    }

    async fn stop(self) -> (Value, Value) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or((Value::Null, Value::Null))
    }
}

/// What the freshness phase saw.
struct Freshness {
    /// Latency of the polling reads, ms (the resolution of the window measurement).
    read_ms: Vec<f64>,
    /// Per write: from the commit's acknowledgement to the first answer with the new value (an
    /// upper bound of the staleness window, including one read's latency).
    windows_sql: Vec<f64>,
    windows_api: Vec<f64>,
    /// Per write: from the acknowledgement to the send of the last read that still got the old
    /// value (a lower bound; 0 when no read after the acknowledgement was stale).
    lower_sql: Vec<f64>,
    lower_api: Vec<f64>,
    writes_sql: u64,
    writes_api: u64,
    write_errors: u64,
    never_seen: u64,
    reads: u64,
    read_errors: u64,
    stale_inside_window: u64,
    /// Stale reads inside the window by write path and by how the cache answered them.
    stale_by_cause: BTreeMap<String, u64>,
    /// Reads older than the window by write path, how the first fresh answer was served, and how
    /// the older read was.
    older_by_cause: BTreeMap<String, u64>,
    older_than_window: u64,
    background: RunResult,
    background_writes: u64,
}

/// A committed write: its sequence number, whether it went through the API, and when the commit
/// was acknowledged to the writer.
struct Write {
    seq: u64,
    api: bool,
    acked: Instant,
}

/// A read: when it was sent and answered, and the sequence number in the title (if any).
struct Read {
    sent: Instant,
    done: Instant,
    seq: Option<u64>,
    /// How the cache answered (`hit`, `collapsed`, `miss`, …), from `Cache-Status`.
    how: &'static str,
}

fn how(cache_status: Option<CacheStatus>) -> &'static str {
    match cache_status {
        Some(CacheStatus::Hit) => "hit",
        Some(CacheStatus::Collapsed) => "collapsed",
        Some(status) if status.is_miss() => "miss",
        Some(status) if status.is_bypass() => "bypass",
        _ => "other",
    }
}

const FRESH_PREFIX: &str = "bench fresh #";

fn seq_of(body: &Bytes) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("title")?.as_str()?.strip_prefix(FRESH_PREFIX)?.parse().ok()
}

async fn freshness(
    args: &Args,
    pg: &tokio_postgres::Client,
    risks: &[RiskRef],
    mix: Arc<Workload>,
    duration: Duration,
) -> anyhow::Result<Freshness> {
    // One risk per tenant where possible, among the hot ones (they are cached).
    let mut targets: Vec<RiskRef> = Vec::new();
    for risk in risks {
        if targets.len() < args.fresh_risks && !targets.iter().any(|t| t.tenant == risk.tenant) {
            targets.push(risk.clone());
        }
    }
    for risk in risks {
        if targets.len() < args.fresh_risks && !targets.iter().any(|t| t.id == risk.id) {
            targets.push(risk.clone());
        }
    }
    // Start from a known title, seen through the cache.
    for target in &targets {
        pg.execute(
            "UPDATE risks SET title = $1 WHERE tenant_id = $2 AND id = $3",
            &[&format!("{FRESH_PREFIX}0"), &target.tenant, &target.id],
        )
        .await?;
        let mut conn = Conn::open(args.cached).await?;
        let started = Instant::now();
        while seq_of(&conn.send_retrying(&detail(target)).await?.body) != Some(0) {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("risk {} never showed its new title", target.id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let stop_readers = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + duration;
    // Readers.
    let mut readers = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        for _ in 0..args.readers_per_risk {
            let (stop, req, addr) = (Arc::clone(&stop_readers), detail(target), args.cached);
            readers.push((
                index,
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr).await?;
                    let (mut reads, mut errors) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        match conn.send_retrying(&req).await {
                            Ok(answer) if answer.status == 200 => reads.push(Read {
                                sent,
                                done: Instant::now(),
                                seq: seq_of(&answer.body),
                                how: how(answer.cache_status),
                            }),
                            _ => errors += 1,
                        }
                    }
                    anyhow::Ok((reads, errors))
                }),
            ));
        }
    }
    // Writers: alternate SQL and API writes on each target.
    let mut writers = Vec::new();
    for target in targets.clone() {
        let (url, addr, interval) =
            (args.database_url.clone(), args.cached, Duration::from_millis(args.write_interval_ms));
        writers.push(tokio::spawn(async move {
            let pg = connect_pg(&url, "openrisk-bench-writer").await?;
            let mut conn = Conn::open(addr).await?;
            let mut rng = SmallRng::seed_from_u64(target.id.as_u128() as u64);
            let (mut writes, mut errors, mut seq) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                seq += 1;
                let title = format!("{FRESH_PREFIX}{seq}");
                let api = seq % 2 == 0;
                let ok = if api {
                    let req = Req {
                        method: Method::PATCH,
                        path: format!("/api/v1/risks/{}", target.id),
                        auth: Some(Arc::clone(&target.auth)),
                        body: Some(Bytes::from(json!({"title": title}).to_string())),
                    };
                    conn.send_retrying(&req).await.map(|a| a.status == 200).unwrap_or(false)
                } else {
                    pg.execute(
                        "UPDATE risks SET title = $1 WHERE tenant_id = $2 AND id = $3",
                        &[&title, &target.tenant, &target.id],
                    )
                    .await
                    .map(|n| n == 1)
                    .unwrap_or(false)
                };
                if ok {
                    writes.push(Write { seq, api, acked: Instant::now() });
                } else {
                    errors += 1;
                    seq -= 1;
                }
                let jitter = rng.random_range(0..=interval.as_millis() as u64 / 2);
                tokio::time::sleep(interval + Duration::from_millis(jitter)).await;
            }
            anyhow::Ok((writes, errors))
        }));
    }
    // Background: SQL writes on other risks, and the dashboard mix at half the rate.
    let background_writer = {
        let url = args.database_url.clone();
        let ids: Vec<(Uuid, Uuid)> =
            risks.iter().filter(|r| !targets.iter().any(|t| t.id == r.id)).map(|r| (r.tenant, r.id)).collect();
        let rate = args.background_writes;
        tokio::spawn(async move {
            let pg = connect_pg(&url, "openrisk-bench-background").await?;
            let mut rng = SmallRng::seed_from_u64(7);
            let weights = Sampler::from_weights(&zipf_weights(ids.len().max(1), 1.0));
            let (mut done, mut due) = (0u64, Instant::now());
            while rate > 0.0 && !ids.is_empty() && Instant::now() < deadline {
                let (tenant, id) = ids[weights.sample(&mut rng).min(ids.len() - 1)];
                pg.execute("UPDATE risks SET description = 'Background benchmark write ' || $3::text WHERE tenant_id = $1 AND id = $2", &[&tenant, &id, &done.to_string()]).await?;
                done += 1;
                due += Duration::from_secs_f64(1.0 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            anyhow::Ok(done)
        })
    };
    let background = open_loop(args.cached, mix, args.connections, args.fresh_background_rate, duration).await?;
    let mut all_writes: Vec<Vec<Write>> = Vec::new();
    let mut write_errors = 0;
    for writer in writers {
        let (writes, errors) = writer.await??;
        all_writes.push(writes);
        write_errors += errors;
    }
    let background_writes = background_writer.await??;
    // Let the readers see the last writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_readers.store(true, Ordering::Relaxed);
    let mut reads_by_target: Vec<Vec<Read>> = targets.iter().map(|_| Vec::new()).collect();
    let mut read_errors = 0;
    for (index, reader) in readers {
        let (reads, errors) = reader.await??;
        reads_by_target[index].extend(reads);
        read_errors += errors;
    }
    let mut read_ms: Vec<f64> =
        reads_by_target.iter().flatten().map(|r| (r.done - r.sent).as_secs_f64() * 1000.0).collect();
    read_ms.sort_by(f64::total_cmp);
    let mut out = Freshness {
        read_ms,
        windows_sql: Vec::new(),
        windows_api: Vec::new(),
        lower_sql: Vec::new(),
        lower_api: Vec::new(),
        writes_sql: 0,
        writes_api: 0,
        write_errors,
        never_seen: 0,
        reads: reads_by_target.iter().map(|r| r.len() as u64).sum(),
        read_errors,
        stale_inside_window: 0,
        stale_by_cause: BTreeMap::new(),
        older_by_cause: BTreeMap::new(),
        older_than_window: 0,
        background,
        background_writes,
    };
    for (writes, reads) in all_writes.iter().zip(&mut reads_by_target) {
        reads.sort_by_key(|r| r.sent);
        for write in writes {
            if write.api {
                out.writes_api += 1;
            } else {
                out.writes_sql += 1;
            }
            // The first answer carrying this write (or a later one).
            let Some(first_read) =
                reads.iter().filter(|r| r.seq.is_some_and(|s| s >= write.seq)).min_by_key(|r| r.done)
            else {
                out.never_seen += 1;
                continue;
            };
            let first = first_read.done;
            let window = first.saturating_duration_since(write.acked).as_secs_f64() * 1000.0;
            if write.api {
                out.windows_api.push(window);
            } else {
                out.windows_sql.push(window);
            }
            let mut lower = 0.0f64;
            for read in reads.iter().filter(|r| r.sent >= write.acked && r.seq.is_none_or(|s| s < write.seq)) {
                lower = lower.max((read.sent - write.acked).as_secs_f64() * 1000.0);
                if read.sent >= first {
                    out.older_than_window += 1;
                    let path = if write.api { "api" } else { "sql" };
                    let cause = format!("{path} write, first fresh answer {}, then {}", first_read.how, read.how);
                    *out.older_by_cause.entry(cause).or_default() += 1;
                } else {
                    out.stale_inside_window += 1;
                    let path = if write.api { "api" } else { "sql" };
                    *out.stale_by_cause.entry(format!("{path} write, {}", read.how)).or_default() += 1;
                }
            }
            if write.api {
                out.lower_api.push(lower);
            } else {
                out.lower_sql.push(lower);
            }
        }
    }
    Ok(out)
}

/// Saturation of ceiling, cached and uncached detail measured by wrk (an independent generator),
/// with a Lua script drawing paths uniformly from the hot set.
async fn run_wrk(args: &Args, hot: &[Req]) -> Value {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("  wrk not installed: skipped");
        return json!({"skipped": "wrk not installed"});
    }
    let paths = args.out.join("wrk-paths.lua");
    let mut lua = String::from("local paths = {\n");
    for req in hot {
        lua.push_str(&format!("  {{\"{}\", \"{}\"}},\n", req.path, req.auth.as_deref().unwrap_or("")));
    }
    lua.push_str(
        "}\nmath.randomseed(os.time())\nrequest = function()\n  local p = paths[math.random(#paths)]\n  \
         return wrk.format(\"GET\", p[1], {[\"Authorization\"] = p[2]})\nend\n",
    );
    if std::fs::write(&paths, lua).is_err() {
        return json!({"skipped": "could not write the Lua script"});
    }
    let mut out = serde_json::Map::new();
    let duration = format!("{}s", args.phase_secs.ceil() as u64);
    let connections = args.connections.to_string();
    for (name, addr, script) in [
        ("ceiling", args.ceiling, None),
        ("cached GET /risks/{id}", args.cached, Some(&paths)),
        ("uncached GET /risks/{id}", args.uncached, Some(&paths)),
    ] {
        let url = match script {
            Some(_) => format!("http://{addr}"),
            None => format!("http://{addr}/ceiling"),
        };
        let mut command = tokio::process::Command::new("wrk");
        command.args(["-t2", "-c", &connections, "-d", &duration, "--latency"]);
        if let Some(script) = script {
            command.arg("-s").arg(script);
        }
        let output = command.arg(&url).output().await;
        let text = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse::<f64>().ok());
        let non_2xx = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        println!("  wrk {name:<28} {:>9.0} req/s, non-2xx {non_2xx}", rps.unwrap_or(0.0));
        out.insert(name.into(), json!({"rps": rps, "non_2xx": non_2xx}));
    }
    let ratio = |a: &str, b: &str| Some(out.get(a)?.get("rps")?.as_f64()? / out.get(b)?.get("rps")?.as_f64()?);
    let ratios = json!({
        "cached_detail_over_ceiling": ratio("cached GET /risks/{id}", "ceiling"),
        "cached_detail_over_uncached": ratio("cached GET /risks/{id}", "uncached GET /risks/{id}"),
    });
    out.insert("ratios".into(), ratios);
    Value::Object(out)
}

/// The results as Markdown tables (pasted into RESULTS.md).
fn summary_markdown(results: &Value) -> String {
    let mut md = String::new();
    let f = |v: &Value| {
        v.as_f64().map_or("–".to_owned(), |x| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") })
    };
    md.push_str("### Saturation (closed loop)\n\n| target | req/s (mean of rounds) |\n|---|---|\n");
    if let Some(map) = results["saturation"]["mean_rps"].as_object() {
        for (name, rps) in map {
            md.push_str(&format!("| {name} | {} |\n", f(rps)));
        }
    }
    md.push_str("\n| ratio | value |\n|---|---|\n");
    if let Some(map) = results["saturation"]["ratios"].as_object() {
        for (name, value) in map {
            md.push_str(&format!("| {name} | {} |\n", f(value)));
        }
    }
    if let Some(map) = results["saturation"]["cpu"].as_object() {
        md.push_str("\nCPU µs per request during saturation (from /proc):\n\n| target | machine busy % | per process |\n|---|---|---|\n");
        for (name, value) in map {
            let per: Vec<String> = value["cpu_us_per_request"]
                .as_object()
                .map(|m| m.iter().map(|(p, v)| format!("{p} {}", f(v))).collect())
                .unwrap_or_default();
            md.push_str(&format!("| {name} | {} | {} |\n", f(&value["machine_busy_percent"]), per.join(", ")));
        }
    }
    if let Some(map) = results["wrk"].as_object() {
        md.push_str("\nwrk (independent generator):\n\n| target | req/s |\n|---|---|\n");
        for (name, value) in map {
            if name != "ratios" {
                md.push_str(&format!("| {name} | {} |\n", f(&value["rps"])));
            }
        }
        if let Some(ratios) = map.get("ratios").and_then(Value::as_object) {
            for (name, value) in ratios {
                md.push_str(&format!("| ratio {name} | {} |\n", f(value)));
            }
        }
    }
    md.push_str("\n### Fixed offered rate (open loop, corrected for coordinated omission)\n\n");
    md.push_str("| target | offered/s | achieved/s | mean ms | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|\n");
    for run in results["fixed_rate"]["runs"].as_array().into_iter().flatten() {
        let l = &run["latency"];
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            run["name"].as_str().unwrap_or(""),
            f(&run["offered_rate"]),
            f(&run["throughput_rps"]),
            f(&l["mean_ms"]),
            f(&l["p50_ms"]),
            f(&l["p95_ms"]),
            f(&l["p99_ms"]),
            f(&l["max_ms"])
        ));
    }
    let mix = &results["dashboard_mix"];
    md.push_str(&format!(
        "\n### Dashboard mix\n\nhit ratio: first phase {} % ({} % of repeat requests), measured {} % ({} % of repeat requests, {} first-time keys)\n\n",
        f(&json!(mix["hit_ratio_first_phase"]["ratio"].as_f64().unwrap_or(0.0) * 100.0)),
        f(&json!(mix["hit_ratio_first_phase"]["ratio_of_repeat_requests"].as_f64().unwrap_or(0.0) * 100.0)),
        f(&json!(mix["hit_ratio_measured"]["ratio"].as_f64().unwrap_or(0.0) * 100.0)),
        f(&json!(mix["hit_ratio_measured"]["ratio_of_repeat_requests"].as_f64().unwrap_or(0.0) * 100.0)),
        mix["hit_ratio_measured"]["first_time_requests"]
    ));
    md.push_str(&format!(
        "resources: `{}`\n\npostgres connections: `{}`\n",
        mix["resources"], mix["postgres_connections"]
    ));
    let topology = &results["topology"];
    if topology.is_object() {
        let rps = &topology["cached_detail_rps"];
        md.push_str(&format!(
            "\n### Single node beside a Redis Cluster\n\ncached GET /risks/{{id}}: node {} req/s, cluster {} req/s\n\n| invalidation lag | p50 ms | p90 ms | p99 ms | writes |\n|---|---|---|---|---|\n",
            f(&rps["node_mean"]),
            f(&rps["cluster_mean"])
        ));
        if let Some(map) = topology["invalidation_lag"].as_object() {
            for (name, lag) in map {
                md.push_str(&format!(
                    "| {name} | {} | {} | {} | {} |\n",
                    f(&lag["p50_ms"]),
                    f(&lag["p90_ms"]),
                    f(&lag["p99_ms"]),
                    lag["writes"]
                ));
            }
        }
        md.push_str("\n| ratio | value |\n|---|---|\n");
        if let Some(map) = topology["ratios"].as_object() {
            for (name, value) in map {
                md.push_str(&format!("| {name} | {} |\n", f(value)));
            }
        }
    }
    let fresh = &results["freshness"];
    md.push_str(&format!(
        "\n### Freshness\n\nSQL writes: window p50 {} ms, p99 {} ms, max {} ms ({} writes)\n\nAPI writes: window p50 {} ms, p99 {} ms, max {} ms ({} writes)\n\nlower bounds (last stale read sent): SQL p50 {} p99 {} max {} ms; API p50 {} p99 {} max {} ms\n\nreads {}, stale inside the window {}, older than the window {}\n\ninvalidator lag: `{}`\n",
        f(&fresh["window_sql"]["p50_ms"]),
        f(&fresh["window_sql"]["p99_ms"]),
        f(&fresh["window_sql"]["max_ms"]),
        fresh["window_sql"]["count"],
        f(&fresh["window_api"]["p50_ms"]),
        f(&fresh["window_api"]["p99_ms"]),
        f(&fresh["window_api"]["max_ms"]),
        fresh["window_api"]["count"],
        f(&fresh["window_sql_lower_bound"]["p50_ms"]),
        f(&fresh["window_sql_lower_bound"]["p99_ms"]),
        f(&fresh["window_sql_lower_bound"]["max_ms"]),
        f(&fresh["window_api_lower_bound"]["p50_ms"]),
        f(&fresh["window_api_lower_bound"]["p99_ms"]),
        f(&fresh["window_api_lower_bound"]["max_ms"]),
        fresh["reads"],
        fresh["stale_reads_inside_window"],
        fresh["reads_older_than_window"],
        fresh["invalidator_lag_ms"]
    ));
    md
}
