//! The staleness window under load (`--window`; `WINDOW=1 load_tests/bench.sh`): for each
//! invalidator variant (a binary, a niceness, a linger, a real-time chain), started here one
//! after the other and interleaved over the rounds, the largest lag in the first second after it
//! starts, then the freshness measurement with `--window-writes` SQL writes per second on other
//! risks, once with the cores otherwise idle and once with the cached API at saturation on the
//! hot details.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use openrisk_load_tests::bench::{procfs, prom};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::args::Args;
use crate::dataset::{Checks, DataSet, scrape};
use crate::freshness::{self, Freshness, Reads, Verdict, pct, pct_text};
use openrisk_load_tests::bench::http::{RunResult, Workload};
use std::sync::Arc;

const LAG: &str = "openrisk_invalidator_lag_seconds";
/// How long after a start the lag counts as start-up lag.
const STARTUP: Duration = Duration::from_secs(1);
/// Start-up lag above this is an outlier (issue 15).
const STARTUP_OUTLIER_SECONDS: f64 = 0.05;

/// One invalidator to measure:
/// `label=path[,nice=N][,linger=MS][,api_nice=N][,realtime|,slice=US]`.
#[derive(Debug, Clone)]
pub struct Variant {
    label: String,
    path: String,
    nice: i32,
    /// Niceness of the cached API (`--api-pid`) during the variant's phases: an operator's lower
    /// CPU weight for the read path than for the write path that invalidates.
    api_nice: i32,
    /// `OPENRISK_INVALIDATOR__LINGER_MS`; unset for binaries that predate the setting.
    linger_ms: Option<u64>,
    /// How the whole invalidation chain (the invalidator, every Postgres process, Redis) is
    /// scheduled while the variant runs, when not as every other process: an operator's answer
    /// to readers that saturate the cores the chain shares with them.
    chain: Option<ChainPolicy>,
}

/// A scheduling of the invalidation chain other than the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPolicy {
    /// `SCHED_FIFO` 1 (`realtime`): runs ahead of every normal process; needs `CAP_SYS_NICE`.
    RealTime,
    /// The normal policy with a custom time slice (`slice=US`, Linux 6.12 or later, no privilege
    /// needed): a woken thread of the chain whose slice is shorter than the running thread's
    /// preempts it instead of waiting for that slice to end, without getting more CPU overall.
    Slice(Duration),
}

impl std::str::FromStr for Variant {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (label, rest) = text
            .split_once('=')
            .context("a variant is label=path[,nice=N][,linger=MS][,api_nice=N][,realtime|,slice=US]")?;
        let mut parts = rest.split(',');
        let path = parts.next().context("a path")?.to_owned();
        let mut variant = Self { label: label.to_owned(), path, nice: 0, api_nice: 0, linger_ms: None, chain: None };
        for part in parts {
            let chain = match part.split_once('=') {
                None if part == "realtime" => Some(ChainPolicy::RealTime),
                Some(("slice", us)) => Some(ChainPolicy::Slice(Duration::from_micros(us.parse()?))),
                Some(("nice", n)) => {
                    variant.nice = n.parse()?;
                    None
                }
                Some(("linger", ms)) => {
                    variant.linger_ms = Some(ms.parse()?);
                    None
                }
                Some(("api_nice", n)) => {
                    variant.api_nice = n.parse()?;
                    None
                }
                _ => bail!("unknown variant option {part:?}"),
            };
            if chain.is_some() {
                anyhow::ensure!(variant.chain.is_none(), "a variant takes one of realtime and slice");
                variant.chain = chain;
            }
        }
        Ok(variant)
    }
}

/// What one variant measured, summed over the rounds.
struct Totals {
    startup_max_s: Vec<f64>,
    idle: Phase,
    saturated: Phase,
}

#[derive(Default)]
struct Phase {
    window: Option<Histogram<u64>>,
    read_ms: Option<Histogram<u64>>,
    lag: Vec<(f64, f64)>,
    reads_per_s: Vec<f64>,
    writes_per_s: Vec<f64>,
    /// The freshness checks' counts over the rounds.
    verdict: Verdict,
    /// The read load beside the freshness readers, its answers added up over the rounds; `None`
    /// for the phase without one.
    background: Option<RunResult>,
}

impl Phase {
    /// A phase with a read load, checked under `name`.
    fn loaded(name: &str, connections: usize) -> Self {
        let background = RunResult::empty(name, "closed", connections, None, Duration::ZERO);
        Self { background: Some(background), ..Self::default() }
    }

    fn add(&mut self, seen: &Freshness, lag: &[(f64, f64)], seconds: f64) {
        merge(&mut self.window, &seen.windows.sql);
        merge(&mut self.read_ms, &seen.read_ms);
        self.lag = if self.lag.is_empty() {
            lag.to_vec()
        } else {
            self.lag.iter().zip(lag).map(|(&(le, a), &(_, b))| (le, a + b)).collect()
        };
        self.reads_per_s.push(seen.background.throughput());
        self.writes_per_s.push(seen.background_writes as f64 / seconds);
        self.verdict.add(Verdict::of(seen));
        if let Some(background) = &mut self.background {
            background.tally.add(&seen.background.tally);
            background.elapsed += seen.background.elapsed;
        }
    }

    /// The freshness checks of the phase `name` of `variant`, and that its read load was answered.
    fn check(&self, checks: &mut Checks, variant: &str, name: &str) {
        self.verdict.check(checks, &format!(" (window, {variant}, {name})"));
        if let Some(background) = &self.background {
            checks.run(background);
        }
    }

    fn report(&self) -> Value {
        let window = self.window.as_ref();
        let at = |p| window.and_then(|w| pct(w, p));
        let lag_ms = |q| prom::quantile(&self.lag, q).map(|s| s.scaled(1000.0));
        json!({
            "sql_writes_seen": window.map(Histogram::len),
            "window_ms": {"p50": at(50.0), "p99": at(99.0), "p99_9": at(99.9), "max": at(100.0)},
            "polling_read_ms": {"p50": self.read_ms.as_ref().and_then(|r| pct(r, 50.0)), "p99": self.read_ms.as_ref().and_then(|r| pct(r, 99.0))},
            "lag_ms": {"p50": lag_ms(0.5), "p99": lag_ms(0.99), "p99_9": lag_ms(0.999)},
            "background_reads_per_s": self.reads_per_s,
            "background_writes_per_s": self.writes_per_s,
            "sql_writes": self.verdict.sql_writes,
            "api_writes": self.verdict.api_writes,
            "write_errors": self.verdict.write_errors,
            "writes_never_seen": self.verdict.never_seen,
            "reads": self.verdict.reads,
            "read_errors": self.verdict.read_errors,
            "reads_older_than_window": self.verdict.older_than_window,
            "background_reads": self.background.as_ref().map(RunResult::summary),
        })
    }
}

fn merge(into: &mut Option<Histogram<u64>>, from: &Histogram<u64>) {
    match into {
        Some(histogram) => histogram.add(from).expect("same bounds"),
        None => *into = Some(from.clone()),
    }
}

/// Runs every variant `--rounds` times, interleaved; prints and returns the `window` report.
pub async fn run(args: &Args, data: &DataSet, hot: Arc<Workload>, checks: &mut Checks) -> anyhow::Result<Value> {
    let mut totals: Vec<Totals> = args
        .invalidator_variant
        .iter()
        .map(|variant| Totals {
            startup_max_s: Vec::new(),
            idle: Phase::default(),
            saturated: Phase::loaded(&format!("window ({}): reads at saturation", variant.label), args.connections),
        })
        .collect();
    // On SIGINT or SIGTERM the rounds are dropped where they are, so the variant's invalidator is
    // killed and a real-time chain gets its default policy back before this process exits.
    tokio::select! {
        measured = measure_rounds(args, data, hot, &mut totals) => measured?,
        signal = interrupted() => bail!("stopped by {signal}; the chain's scheduling policy is restored"),
    }
    let mut report = Vec::new();
    for (variant, total) in args.invalidator_variant.iter().zip(&totals) {
        total.idle.check(checks, &variant.label, "idle");
        total.saturated.check(checks, &variant.label, "API at saturation");
        let outliers = total.startup_max_s.iter().filter(|&&max| max > STARTUP_OUTLIER_SECONDS).count();
        report.push(json!({
            "variant": variant.label,
            "binary": variant.path,
            "nice": variant.nice,
            "api_nice": variant.api_nice,
            "linger_ms": variant.linger_ms,
            "realtime_chain": variant.chain == Some(ChainPolicy::RealTime),
            "chain_slice_us": match variant.chain {
                Some(ChainPolicy::Slice(slice)) => Some(slice.as_micros()),
                _ => None,
            },
            "startup_max_lag_ms": total.startup_max_s.iter().map(|s| s * 1000.0).collect::<Vec<_>>(),
            "startups_above_50ms": outliers,
            "idle": total.idle.report(),
            "saturated": total.saturated.report(),
        }));
    }
    let table = markdown(args, &report);
    println!("{table}");
    std::fs::write(args.out.join("window.md"), &table)?;
    Ok(
        json!({"window_writes_per_s": args.window_writes, "phase_s": args.phase_secs, "rounds": args.rounds, "variants": report}),
    )
}

/// Every variant `--rounds` times, interleaved, adding what each saw to its `totals`.
async fn measure_rounds(args: &Args, data: &DataSet, hot: Arc<Workload>, totals: &mut [Totals]) -> anyhow::Result<()> {
    let phase = Duration::from_secs_f64(args.phase_secs);
    let others: Vec<(Uuid, Uuid)> = data.risks.iter().skip(args.fresh_risks * 4).map(|r| (r.tenant, r.id)).collect();
    // The seed left its events in the outbox: an unmeasured start drains them, so that the
    // first measured start's lag is its own and not the seed's age.
    let first = args.invalidator_variant.first().context("no --invalidator-variant")?;
    let (mut child, _) = start(first).await?;
    drained(&data.pg).await?;
    stop(&mut child).await;
    for round in 0..args.rounds {
        for (variant, total) in args.invalidator_variant.iter().zip(totals.iter_mut()) {
            println!("== window, round {round}: invalidator {}", variant.label);
            let (mut child, metrics) = start(variant).await?;
            // Restored when dropped: after the phases, or on the way out of a failed one.
            let chain = match variant.chain {
                Some(policy) => Some(ChainScheduling::start(&data.pg, &args.redis_url, &child, policy).await?),
                None => None,
            };
            let started = Instant::now();
            let writes =
                freshness::sql_writes(args.database_url.clone(), others.clone(), args.window_writes, started + STARTUP);
            let written = writes.await?;
            drained(&data.pg).await?;
            let lag = prom::buckets(&scrape(metrics).await?, LAG);
            let max = max_bucket(&lag);
            println!("  first second: {written} writes, largest lag at most {:.1} ms", max * 1000.0);
            total.startup_max_s.push(max);
            if variant.api_nice != 0 {
                renice_threads(args.api_pid, variant.api_nice)?;
            }

            for (reads, into) in
                [(Reads::Idle, &mut total.idle), (Reads::Saturation(Arc::clone(&hot)), &mut total.saturated)]
            {
                let name = if matches!(reads, Reads::Idle) { "idle" } else { "API at saturation" };
                let before = prom::buckets(&scrape(metrics).await?, LAG);
                let seen = freshness::measure(args, &data.pg, &data.risks, reads, args.window_writes, phase).await?;
                drained(&data.pg).await?;
                let after = prom::buckets(&scrape(metrics).await?, LAG);
                let lag = prom::bucket_delta(&before, &after);
                let lag_ms = |q| prom::show(prom::quantile(&lag, q).map(|s| s.scaled(1000.0)));
                println!(
                    "  {name}: {:.0} reads/s, {:.0} writes/s, {:.0} freshness probe reads/s; SQL window p50 {} p99 {} p99.9 {} max {} ms ({} writes; last stale read p99 {} ms; stale reads {:?}); polling reads p99 {} ms; lag p50 {} p99 {} ms",
                    seen.background.throughput(),
                    seen.background_writes as f64 / phase.as_secs_f64(),
                    seen.reads as f64 / phase.as_secs_f64(),
                    pct_text(&seen.windows.sql, 50.0),
                    pct_text(&seen.windows.sql, 99.0),
                    pct_text(&seen.windows.sql, 99.9),
                    pct_text(&seen.windows.sql, 100.0),
                    seen.windows.sql.len(),
                    pct_text(&seen.lower.sql, 99.0),
                    seen.stale_by_cause,
                    pct_text(&seen.read_ms, 99.0),
                    lag_ms(0.5),
                    lag_ms(0.99),
                );
                into.add(&seen, &lag, phase.as_secs_f64());
            }
            if variant.api_nice != 0 {
                renice_threads(args.api_pid, 0)?;
            }
            drop(chain);
            stop(&mut child).await;
        }
    }
    Ok(())
}

/// Resolves with the signal's name on the first SIGINT or SIGTERM. Once polled, the handlers stay
/// installed for the life of the process (tokio's way): a signal after the rounds is not acted on.
/// A signal whose handler cannot be installed keeps its default action (exit).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let received = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
                name
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        name = received(SignalKind::interrupt(), "SIGINT") => name,
        name = received(SignalKind::terminate(), "SIGTERM") => name,
    }
}

/// The variants side by side, the first one as the reference of the ratios.
fn markdown(args: &Args, report: &[Value]) -> String {
    // A number; a string (a quantile above the lag histogram's highest bound, `> 50`) as it is.
    let f = |v: &Value| match (v.as_f64(), v.as_str()) {
        (Some(x), _) => format!("{x:.2}"),
        (None, Some(text)) => text.to_owned(),
        (None, None) => "-".to_owned(),
    };
    let mut out = format!(
        "{} rounds of {} s per phase; SQL writes {}/s on other risks; window = first fresh answer after the SQL commit returned, ms; lag = `openrisk_invalidator_lag_seconds`, ms\n\n",
        args.rounds, args.phase_secs, args.window_writes
    );
    out.push_str("| invalidator | start-up: largest lag in the first second, ms (per round) | idle: window p50 / p99 / p99.9 / max | idle: lag p50 / p99 | saturated: reads/s | saturated: window p50 / p99 / p99.9 / max | saturated: polling reads p99 | saturated: lag p50 / p99 |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for v in report {
        let (idle, sat) = (&v["idle"], &v["saturated"]);
        let reads: Vec<String> = sat["background_reads_per_s"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{:.0}", r.as_f64().unwrap_or(0.0)))
            .collect();
        let startup: Vec<String> = v["startup_max_lag_ms"].as_array().into_iter().flatten().map(f).collect();
        // The quantiles of one cell, `a / b / …`, the one to read first in bold.
        let quantiles = |of: &Value, keys: &[&str], bold: &str| {
            let cell = |key: &&str| if *key == bold { format!("**{}**", f(&of[key])) } else { f(&of[key]) };
            keys.iter().map(cell).collect::<Vec<_>>().join(" / ")
        };
        let (window, lag) = (["p50", "p99", "p99_9", "max"], ["p50", "p99"]);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            v["variant"].as_str().unwrap_or("?"),
            startup.join(", "),
            quantiles(&idle["window_ms"], &window, "p99_9"),
            quantiles(&idle["lag_ms"], &lag, "p99"),
            reads.join(", "),
            quantiles(&sat["window_ms"], &window, "p99"),
            f(&sat["polling_read_ms"]["p99"]),
            quantiles(&sat["lag_ms"], &lag, "p99"),
        ));
    }
    out
}

/// The upper bound of the highest non-empty bucket, in seconds (0 without observations).
fn max_bucket(buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().map_or(0.0, |&(_, count)| count);
    buckets.iter().find(|&&(_, count)| count >= total && total > 0.0).map_or(0.0, |&(le, _)| le)
}

/// Starts a variant on a free loopback port, waits until its /metrics answers and checks that it
/// runs at the variant's niceness (`nice` runs the command at its own niceness when it may not
/// set the one asked for: a negative one needs `CAP_SYS_NICE`).
async fn start(variant: &Variant) -> anyhow::Result<(Child, SocketAddr)> {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut command = if variant.nice == 0 {
        Command::new(&variant.path)
    } else {
        let mut nice = Command::new("nice");
        nice.args(["-n", &variant.nice.to_string(), &variant.path]);
        nice
    };
    command.arg("run").env("METRICS_ADDR", metrics.to_string()).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(linger) = variant.linger_ms {
        command.env("OPENRISK_INVALIDATOR__LINGER_MS", linger.to_string());
    }
    let child = command.spawn().with_context(|| format!("starting {}", variant.path))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while scrape(metrics).await.is_err() {
        if Instant::now() > deadline {
            bail!("invalidator {} never answered on {metrics}", variant.label);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = child.id().with_context(|| format!("invalidator {} exited", variant.label))?;
    let nice = procfs::nice(pid).with_context(|| format!("the niceness of invalidator {}", variant.label))?;
    anyhow::ensure!(
        nice == variant.nice,
        "invalidator {} runs at nice {nice}, not {} (a negative niceness needs CAP_SYS_NICE)",
        variant.label,
        variant.nice
    );
    Ok((child, metrics))
}

/// Sets the niceness of every thread of process `pid` (each thread has its own; `renice` of the
/// pid alone changes only the main thread). Lowering it again needs `CAP_SYS_NICE`.
fn renice_threads(pid: u32, nice: i32) -> anyhow::Result<()> {
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .map(|thread| thread.map(|thread| thread.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&threads)
        .stdout(Stdio::null())
        .status()
        .context("running renice")?;
    anyhow::ensure!(status.success(), "renice -n {nice} of the threads of {pid} failed");
    Ok(())
}

/// The invalidation chain scheduled by a [`ChainPolicy`] for as long as this lives: the
/// invalidator, the Postgres server (its postmaster, so the backends it starts later inherit the
/// policy, and every process it started) and the Redis server. Dropping it restores the default
/// to the chain as it is then, backends started meanwhile included, also when a phase failed.
struct ChainScheduling {
    postmaster: u32,
    redis: u32,
    invalidator: u32,
    policy: ChainPolicy,
}

impl ChainScheduling {
    /// Finds the chain of `pg`, `redis_url` and `invalidator` and schedules it by `policy`.
    async fn start(
        pg: &tokio_postgres::Client,
        redis_url: &str,
        invalidator: &Child,
        policy: ChainPolicy,
    ) -> anyhow::Result<Self> {
        let backend: i32 = pg.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        let postmaster = procfs::parent(backend.try_into()?).context("the backend's postmaster")?;
        let mut redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await?;
        let redis_pid = info.lines().find_map(|line| line.strip_prefix("process_id:")).context("process_id")?;
        let chain = Self {
            postmaster,
            redis: redis_pid.trim().parse()?,
            invalidator: invalidator.id().context("the invalidator exited")?,
            policy,
        };
        chain.apply(true)?;
        Ok(chain)
    }

    /// Every process of the chain as it is now.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.postmaster, self.redis, self.invalidator];
        pids.extend(procfs::children(self.postmaster));
        pids
    }

    /// Every thread of the chain to the policy (`on`) or back to the default; a process that
    /// has exited meanwhile (a backend whose client left) is passed over.
    fn apply(&self, on: bool) -> anyhow::Result<()> {
        for pid in self.pids() {
            let applied = match self.policy {
                ChainPolicy::RealTime => chrt_all_threads(pid, if on { ["-f", "1"] } else { ["-o", "0"] }),
                ChainPolicy::Slice(slice) => slice_all_threads(pid, if on { slice } else { Duration::ZERO }),
            };
            let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
            anyhow::ensure!(applied.is_ok() || gone, "scheduling {pid} by {:?}: {applied:?}", self.policy);
        }
        Ok(())
    }
}

impl Drop for ChainScheduling {
    fn drop(&mut self) {
        if let Err(error) = self.apply(false) {
            eprintln!("restoring the chain's scheduling: {error:#}");
        }
    }
}

/// `chrt -a <policy> -p <priority>` on every thread of `pid` (needs `CAP_SYS_NICE`).
fn chrt_all_threads(pid: u32, [policy, priority]: [&str; 2]) -> anyhow::Result<()> {
    let status = std::process::Command::new("chrt")
        .args(["-a", policy, "-p", priority, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running chrt")?;
    anyhow::ensure!(status.success(), "chrt {policy} -p {priority} {pid} failed");
    Ok(())
}

/// `sched_setattr(2)` with the normal policy and `slice` as `sched_runtime` on every thread of
/// `pid` (its niceness kept); a zero slice restores the kernel's default. Threads and processes
/// started later by one of them inherit it. Kernels before 6.12 ignore the slice.
fn slice_all_threads(pid: u32, slice: Duration) -> anyhow::Result<()> {
    for thread in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = thread?.file_name().to_string_lossy().parse()?;
        // SAFETY: getpriority only reads the scheduling state of the thread it names.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        let attr = libc::sched_attr {
            size: std::mem::size_of::<libc::sched_attr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: slice.as_nanos().try_into()?,
            sched_deadline: 0,
            sched_period: 0,
        };
        // SAFETY: `attr` is a valid, fully initialised `sched_attr` whose `size` is its own size,
        // and it outlives the call; the kernel only reads it.
        let result = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &attr as *const libc::sched_attr, 0u32) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            let gone = !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
            anyhow::ensure!(gone, "sched_setattr of thread {tid}: {error}");
        }
    }
    Ok(())
}

/// SIGTERM, then waits for the exit.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
}

/// Waits until the outbox is empty.
async fn drained(pg: &tokio_postgres::Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = pg.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} events still in the outbox after a minute");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{ChainPolicy, Variant};

    #[test]
    fn a_variant_reads_realtime_beside_its_other_options() {
        let variant: Variant = "rt=/bin/invalidator,linger=0,realtime,nice=-5".parse().unwrap();
        assert_eq!((variant.label.as_str(), variant.path.as_str()), ("rt", "/bin/invalidator"));
        assert_eq!(variant.chain, Some(ChainPolicy::RealTime));
        assert_eq!((variant.linger_ms, variant.nice), (Some(0), -5));
    }

    #[test]
    fn a_variant_reads_a_chain_slice_in_microseconds() {
        let variant: Variant = "short=/bin/invalidator,slice=100,linger=0".parse().unwrap();
        assert_eq!(variant.chain, Some(ChainPolicy::Slice(std::time::Duration::from_micros(100))));
        let error = "both=/bin/invalidator,slice=100,realtime".parse::<Variant>().unwrap_err();
        assert!(error.to_string().contains("one of realtime and slice"), "{error}");
    }

    #[test]
    fn a_variant_without_realtime_keeps_the_default_policy() {
        let variant: Variant = "plain=/bin/invalidator,linger=0".parse().unwrap();
        assert_eq!(variant.chain, None);
    }

    #[test]
    fn an_unknown_variant_option_is_refused_by_name() {
        let error = "x=/bin/invalidator,realtyme".parse::<Variant>().unwrap_err();
        assert!(error.to_string().contains("realtyme"), "{error}");
    }
}
