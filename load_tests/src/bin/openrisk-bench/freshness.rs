//! Freshness under writes: writers change risk titles through SQL and through the API while
//! readers poll them through the cache; how long after the commit the API first answers the new
//! title, and whether any read is older than that.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use openrisk_load_tests::bench::http::{Conn, Req, RunResult, Workload, closed_loop, open_loop};
use openrisk_load_tests::bench::prom;
use openrisk_shared::CacheStatus;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::args::Args;
use crate::dataset::{Checks, DataSet, RiskRef, detail, scrape};
use crate::resources::ResourceSampler;

/// Runs the phase with the dashboard `mix` in the background; returns what it saw and the
/// section `freshness` of `results.json`.
pub async fn run(
    args: &Args,
    data: &DataSet,
    mix: Arc<Workload>,
    checks: &mut Checks,
) -> anyhow::Result<(Freshness, Value)> {
    let phase = Duration::from_secs_f64(args.phase_secs);
    println!(
        "== freshness: {} risks, {} readers each, a write every {} ms per risk, {} background writes/s, mix at {}/s, {:?}",
        args.fresh_risks,
        args.readers_per_risk,
        args.write_interval_ms,
        args.background_writes,
        args.fresh_background_rate,
        phase * 2
    );
    let invalidator_before =
        scrape(args.invalidator_metrics).await.context("the invalidator's metrics before the freshness phase")?;
    let sampler = ResourceSampler::start(args);
    let reads = Reads::Rate(mix, args.fresh_background_rate);
    let freshness = measure(args, &data.pg, &data.risks, reads, args.background_writes, phase * 2).await?;
    let (fresh_resources, fresh_connections) = sampler.stop().await;
    let invalidator_after =
        scrape(args.invalidator_metrics).await.context("the invalidator's metrics after the freshness phase")?;
    let lag = prom::bucket_delta(
        &prom::buckets(&invalidator_before, "openrisk_invalidator_lag_seconds"),
        &prom::buckets(&invalidator_after, "openrisk_invalidator_lag_seconds"),
    );
    let lag_ms = |q| prom::quantile(&lag, q).map(|s| s.scaled(1000.0));
    let events = prom::sum(&invalidator_after, "openrisk_invalidator_events_processed_total", &[])
        - prom::sum(&invalidator_before, "openrisk_invalidator_events_processed_total", &[]);
    checks.run(&freshness.background);
    Verdict::of(&freshness).check(checks, "");
    let window = |v: &Histogram<u64>| json!({"count": v.len(), "p50_ms": pct(v, 50.0), "p99_ms": pct(v, 99.0), "max_ms": pct(v, 100.0)});
    let report = json!({
            "duration_s": (phase * 2).as_secs_f64(),
            "window_sql": window(&freshness.windows.sql),
            "window_api": window(&freshness.windows.api),
            "window_sql_lower_bound": window(&freshness.lower.sql),
            "window_api_lower_bound": window(&freshness.lower.api),
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
    });
    let spread = |h: &Histogram<u64>| {
        format!("p50 {} p99 {} max {} ms", pct_text(h, 50.0), pct_text(h, 99.0), pct_text(h, 100.0))
    };
    println!(
        "  window after commit: SQL {}; API {}; {} stale reads inside windows, {} older than the window",
        spread(&freshness.windows.sql),
        spread(&freshness.windows.api),
        freshness.stale_inside_window,
        freshness.older_than_window
    );
    println!(
        "  lower bounds (last stale read sent after commit): SQL {}; API {}",
        spread(&freshness.lower.sql),
        spread(&freshness.lower.api)
    );
    println!("  polling reads: {}", spread(&freshness.read_ms));
    println!("  stale reads inside windows by cause: {:?}", freshness.stale_by_cause);
    if !freshness.older_by_cause.is_empty() {
        println!("  reads older than the window by cause: {:?}", freshness.older_by_cause);
    }
    println!(
        "  invalidator: {events} events, lag p50 {} ms p99 {} ms",
        prom::show(lag_ms(0.5)),
        prom::show(lag_ms(0.99))
    );
    Ok((freshness, report))
}

/// An empty histogram of milliseconds, recorded in microseconds.
/// (Bounded up front: `saturating_record` never resizes, so an auto-resizing histogram created
/// with `Histogram::new` clamped every value to its initial range of 2 µs.)
fn ms_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn record_ms(histogram: &mut Histogram<u64>, ms: f64) {
    histogram.saturating_record((ms * 1000.0).round() as u64);
}

/// Percentile `p` (0–100) of a histogram of [`ms_histogram`], in milliseconds; `None` when it
/// is empty, so that a phase that measured nothing reports no value rather than 0 ms.
pub fn pct(histogram: &Histogram<u64>, p: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_percentile(p) as f64 / 1000.0)
}

/// [`pct`] as printed: two decimals, or `–` when the histogram is empty.
pub fn pct_text(histogram: &Histogram<u64>, p: f64) -> String {
    pct(histogram, p).map_or_else(|| "–".to_owned(), |ms| format!("{ms:.2}"))
}

/// What the correctness checks of freshness measurements read, summed over measurements (the
/// rounds of one `--window` phase, or the one measurement of the main run).
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    pub sql_writes: u64,
    pub api_writes: u64,
    pub write_errors: u64,
    pub never_seen: u64,
    pub reads: u64,
    pub read_errors: u64,
    pub older_than_window: u64,
}

impl Verdict {
    pub fn of(seen: &Freshness) -> Self {
        Self {
            sql_writes: seen.writes.sql,
            api_writes: seen.writes.api,
            write_errors: seen.write_errors,
            never_seen: seen.never_seen,
            reads: seen.reads,
            read_errors: seen.read_errors,
            older_than_window: seen.older_than_window,
        }
    }

    pub fn add(&mut self, other: Verdict) {
        self.sql_writes += other.sql_writes;
        self.api_writes += other.api_writes;
        self.write_errors += other.write_errors;
        self.never_seen += other.never_seen;
        self.reads += other.reads;
        self.read_errors += other.read_errors;
        self.older_than_window += other.older_than_window;
    }

    /// Checks that writes through both paths were made, none failed and every one was seen, and
    /// that reads were made, none failed and none was older than the window: without writes or
    /// reads there is no window to speak of. `scope` ends each check's name (` (window, …)`).
    pub fn check(&self, checks: &mut Checks, scope: &str) {
        checks.check(
            &format!("every write was committed and then seen by a reader{scope}"),
            self.sql_writes > 0 && self.api_writes > 0 && self.write_errors == 0 && self.never_seen == 0,
            format!(
                "{} SQL + {} API writes, {} errors, {} never seen",
                self.sql_writes, self.api_writes, self.write_errors, self.never_seen
            ),
        );
        checks.check(
            &format!("no read returned a value older than the staleness window{scope}"),
            self.older_than_window == 0 && self.read_errors == 0 && self.reads > 0,
            format!(
                "{} reads, {} older than the window, {} errors",
                self.reads, self.older_than_window, self.read_errors
            ),
        );
    }
}

/// What the freshness phase saw.
pub struct Freshness {
    /// Latency of the polling reads, ms (the resolution of the window measurement).
    pub read_ms: Histogram<u64>,
    /// Per write: from the commit's acknowledgement to the first answer with the new value (an
    /// upper bound of the staleness window, including one read's latency).
    pub windows: ByPath<Histogram<u64>>,
    /// Per write: from the acknowledgement to the send of the last read that still got the old
    /// value (a lower bound; 0 when no read after the acknowledgement was stale).
    pub lower: ByPath<Histogram<u64>>,
    /// Committed writes.
    pub writes: ByPath<u64>,
    pub write_errors: u64,
    pub never_seen: u64,
    pub reads: u64,
    pub read_errors: u64,
    pub stale_inside_window: u64,
    /// Stale reads inside the window by write path and by how the cache answered them.
    pub stale_by_cause: BTreeMap<String, u64>,
    /// Reads older than the window by write path, how the first fresh answer was served, and how
    /// the older read was.
    pub older_by_cause: BTreeMap<String, u64>,
    pub older_than_window: u64,
    pub background: RunResult,
    pub background_writes: u64,
}

/// One value per write path: through SQL and through the API.
#[derive(Default)]
pub struct ByPath<T> {
    pub sql: T,
    pub api: T,
}

impl<T> ByPath<T> {
    fn each(make: impl Fn() -> T) -> Self {
        Self { sql: make(), api: make() }
    }

    /// The value of the API path when `api`, else of the SQL path.
    fn of(&mut self, api: bool) -> &mut T {
        if api { &mut self.api } else { &mut self.sql }
    }
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

/// The read load beside the freshness readers.
pub enum Reads {
    /// None: the cores are left to the writers, the invalidator and the polling readers.
    Idle,
    /// A workload at a fixed offered rate (open loop).
    Rate(Arc<Workload>, f64),
    /// A workload at saturation (closed loop over `--connections`).
    Saturation(Arc<Workload>),
}

/// SQL connections sharing the background writes, so that their rate holds when the cores are
/// busy.
const BACKGROUND_WRITERS: u64 = 4;

/// Writers and readers on `--fresh-risks` risks for `duration`, beside `reads` and
/// `background_writes` SQL updates per second on other risks.
pub async fn measure(
    args: &Args,
    pg: &tokio_postgres::Client,
    risks: &[RiskRef],
    reads: Reads,
    background_writes: f64,
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
    // Per target, the sequence number of the latest write sent: its readers read densely until
    // they have seen it, and wake as soon as the next one is sent.
    let latest: Vec<Arc<watch::Sender<u64>>> = targets.iter().map(|_| Arc::new(watch::Sender::new(0))).collect();
    let pace = Pace {
        unseen: Duration::from_millis(args.read_interval_ms),
        settled: Duration::from_millis(args.settled_read_interval_ms.unwrap_or(args.read_interval_ms)),
    };
    // Readers.
    let mut readers = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        for _ in 0..args.readers_per_risk {
            let (stop, req, addr) = (Arc::clone(&stop_readers), detail(target), args.cached);
            let latest = latest[index].subscribe();
            readers.push((index, tokio::spawn(read_until_stopped(addr, req, latest, pace, stop))));
        }
    }
    // Writers: alternate SQL and API writes on each target.
    let mut writers = Vec::new();
    for (target, latest) in targets.iter().cloned().zip(&latest) {
        let (url, addr, interval) =
            (args.database_url.clone(), args.cached, Duration::from_millis(args.write_interval_ms));
        let latest = Arc::clone(latest);
        writers.push(tokio::spawn(async move {
            let pg = openrisk_shared::db::connect(&url, "openrisk-bench-writer", &Default::default()).await?;
            let mut conn = Conn::open(addr).await?;
            let mut rng = SmallRng::seed_from_u64(target.id.as_u128() as u64);
            let (mut writes, mut errors, mut seq) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                seq += 1;
                let title = format!("{FRESH_PREFIX}{seq}");
                let api = seq % 2 == 0;
                latest.send_replace(seq);
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
    // Background: SQL writes on other risks, and the read load.
    let ids: Vec<(Uuid, Uuid)> =
        risks.iter().filter(|r| !targets.iter().any(|t| t.id == r.id)).map(|r| (r.tenant, r.id)).collect();
    let background_writer = tokio::spawn(sql_writes(args.database_url.clone(), ids, background_writes, deadline));
    let background = match reads {
        Reads::Idle => {
            tokio::time::sleep_until(deadline.into()).await;
            RunResult::empty("no read load", "none", 0, None, duration)
        }
        Reads::Rate(workload, rate) => open_loop(args.cached, workload, args.connections, rate, duration).await?,
        Reads::Saturation(workload) => closed_loop(args.cached, workload, args.connections, duration).await?,
    };
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
    let mut read_ms = ms_histogram();
    for read in reads_by_target.iter().flatten() {
        record_ms(&mut read_ms, (read.done - read.sent).as_secs_f64() * 1000.0);
    }
    let mut out = Freshness {
        read_ms,
        windows: ByPath::each(ms_histogram),
        lower: ByPath::each(ms_histogram),
        writes: ByPath::default(),
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
            *out.writes.of(write.api) += 1;
            // The first answer carrying this write (or a later one).
            let Some(first_read) =
                reads.iter().filter(|r| r.seq.is_some_and(|s| s >= write.seq)).min_by_key(|r| r.done)
            else {
                out.never_seen += 1;
                continue;
            };
            let first = first_read.done;
            let window = first.saturating_duration_since(write.acked).as_secs_f64() * 1000.0;
            record_ms(out.windows.of(write.api), window);
            let path = if write.api { "api" } else { "sql" };
            let mut lower = 0.0f64;
            for read in reads.iter().filter(|r| r.sent >= write.acked && r.seq.is_none_or(|s| s < write.seq)) {
                lower = lower.max((read.sent - write.acked).as_secs_f64() * 1000.0);
                if read.sent >= first {
                    out.older_than_window += 1;
                    let cause = format!("{path} write, first fresh answer {}, then {}", first_read.how, read.how);
                    *out.older_by_cause.entry(cause).or_default() += 1;
                } else {
                    out.stale_inside_window += 1;
                    *out.stale_by_cause.entry(format!("{path} write, {}", read.how)).or_default() += 1;
                }
            }
            record_ms(out.lower.of(write.api), lower);
        }
    }
    Ok(out)
}

/// How long a freshness reader waits between two reads it sends.
#[derive(Clone, Copy)]
struct Pace {
    /// While the latest write to its risk is not yet seen: the resolution of the window.
    unseen: Duration,
    /// Once it is seen, until the next write is sent.
    settled: Duration,
}

/// One freshness reader: reads `req` until `stop`, paced by `pace` against the latest write
/// sent (`latest`); returns its reads and how many failed.
async fn read_until_stopped(
    addr: std::net::SocketAddr,
    req: Req,
    mut latest: watch::Receiver<u64>,
    pace: Pace,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Read>, u64)> {
    let mut conn = Conn::open(addr).await?;
    let (mut reads, mut errors, mut seen) = (Vec::new(), 0u64, 0u64);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if seen >= *latest.borrow_and_update() {
            let settled = tokio::time::sleep_until((next + pace.settled.saturating_sub(pace.unseen)).into());
            // The writers' senders outlive the readers, so `changed` fails only at the end.
            tokio::select! {
                () = settled => {}
                _ = latest.changed() => {}
            }
        }
        tokio::time::sleep_until(next.into()).await;
        let sent = Instant::now();
        next = sent + pace.unseen;
        match conn.send_retrying(&req).await {
            Ok(answer) if answer.status == 200 => {
                let seq = seq_of(&answer.body);
                seen = seen.max(seq.unwrap_or_default());
                reads.push(Read { sent, done: Instant::now(), seq, how: how(answer.cache_status) });
            }
            _ => errors += 1,
        }
    }
    Ok((reads, errors))
}

/// `rate` SQL updates per second until `deadline`, uniform over `ids` (so that the writers
/// rarely wait for each other's row locks), spread over [`BACKGROUND_WRITERS`] connections;
/// resolves to how many were made.
pub async fn sql_writes(url: String, ids: Vec<(Uuid, Uuid)>, rate: f64, deadline: Instant) -> anyhow::Result<u64> {
    if rate <= 0.0 || ids.is_empty() {
        return Ok(0);
    }
    let ids = Arc::new(ids);
    let mut writers = Vec::new();
    for writer in 0..BACKGROUND_WRITERS {
        let ids = Arc::clone(&ids);
        let pg = openrisk_shared::db::connect(&url, "openrisk-bench-background", &Default::default()).await?;
        writers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(7 + writer);
            let every = Duration::from_secs_f64(BACKGROUND_WRITERS as f64 / rate);
            let (mut done, mut due) = (0u64, Instant::now() + every.mul_f64(writer as f64 / BACKGROUND_WRITERS as f64));
            while Instant::now() < deadline {
                tokio::time::sleep_until(due.into()).await;
                let (tenant, id) = ids[rng.random_range(0..ids.len())];
                pg.execute(
                    "UPDATE risks SET description = 'Background benchmark write ' || $3::text WHERE tenant_id = $1 AND id = $2",
                    &[&tenant, &id, &done.to_string()],
                )
                .await?;
                done += 1;
                due += every;
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for writer in writers {
        done += writer.await??;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::{Verdict, ms_histogram, pct, pct_text, record_ms};
    use crate::dataset::Checks;

    /// Whether each of `verdict`'s two checks passed.
    fn outcomes(verdict: Verdict) -> Vec<bool> {
        let mut checks = Checks::default();
        verdict.check(&mut checks, " (test)");
        checks.0.iter().map(|check| check.ok).collect()
    }

    #[test]
    fn a_measurement_without_writes_or_reads_fails_both_checks() {
        assert_eq!(outcomes(Verdict::default()), [false, false]);
    }

    #[test]
    fn failed_or_missing_writes_and_failed_reads_fail_even_when_nothing_was_stale() {
        let clean = Verdict { sql_writes: 3, api_writes: 3, reads: 100, ..Verdict::default() };
        assert_eq!(outcomes(clean), [true, true]);
        assert_eq!(outcomes(Verdict { write_errors: 1, ..clean }), [false, true]);
        assert_eq!(outcomes(Verdict { api_writes: 0, ..clean }), [false, true]);
        assert_eq!(outcomes(Verdict { never_seen: 1, ..clean }), [false, true]);
        assert_eq!(outcomes(Verdict { read_errors: 1, ..clean }), [true, false]);
        assert_eq!(outcomes(Verdict { older_than_window: 1, ..clean }), [true, false]);
    }

    #[test]
    fn an_empty_histogram_reports_no_percentile_rather_than_zero() {
        let mut histogram = ms_histogram();
        assert_eq!((pct(&histogram, 99.0), pct_text(&histogram, 99.0).as_str()), (None, "–"));
        record_ms(&mut histogram, 1.0);
        assert_eq!((pct(&histogram, 99.0), pct_text(&histogram, 99.0).as_str()), (Some(1.0), "1.00"));
    }
}
