//! Soak mode: the workload runs for `--duration` with a fault every `--fault-every` seconds
//! (each followed by the full check), and every `--sample-every` seconds the RSS of each
//! process, the Postgres and Redis connections, the outbox backlog, the staleness window and
//! the invalidators' lag are sampled. Growth from the middle third of the run to the last third
//! fails the run; the samples are written as `soak.csv` and plotted in `soak.svg`, also when a
//! signal stops the run before its end.

mod lag;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use self::lag::{Buckets, LagScraper};
use crate::summary::percentile;
use crate::world::World;
use crate::{Config, Tally, faults, inject_and_check};

#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    rss_kb: BTreeMap<String, u64>,
    /// Postgres connections of the processes under test (-1 when Postgres did not answer).
    connections: i64,
    /// Clients connected to Redis, summed over its masters (-1 when Redis did not answer).
    redis_clients: i64,
    backlog: i64,
    /// p99 of the steady-state staleness probes since the previous sample (seconds).
    staleness_p99: Option<f64>,
    /// p99 of `openrisk_invalidator_lag_seconds` since the previous sample, over every
    /// invalidator (the upper bound of its bucket, seconds).
    lag_p99: Option<f64>,
}

/// What a soak has sampled and injected so far. It is kept outside the run, so that a run a
/// signal stops (which drops the run mid-way) still leaves its samples behind.
#[derive(Default)]
pub struct Record {
    samples: Mutex<Vec<Sample>>,
    /// When each fault was injected (seconds since the start) and its name.
    injected: Mutex<Vec<(f64, String)>>,
}

impl Record {
    /// Writes what has been recorded as `soak.csv` and `soak.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let samples = self.samples.lock().unwrap().clone();
        report::write(dir, &samples, &self.injected.lock().unwrap())?;
        println!("  soak samples: {0}/soak.csv, plot: {0}/soak.svg ({1} samples)", dir.display(), samples.len());
        Ok(())
    }
}

async fn sample(world: &World, since_probe: &mut usize, lag: &mut LagScraper) -> Sample {
    let mut rss_kb = BTreeMap::new();
    for proc in [&world.api, &world.api_ref].into_iter().chain(world.invalidators.iter()) {
        let proc = proc.lock().await;
        if let Some(rss) = proc.rss_kb() {
            rss_kb.insert(proc.spec.name.clone(), rss);
        }
    }
    let mut recent_lag = Buckets::default();
    for proc in &world.invalidators {
        let (name, addr) = {
            let proc = proc.lock().await;
            (proc.spec.name.clone(), proc.spec.health_addr.clone())
        };
        let page = world.http.get(format!("http://{addr}/metrics")).send().await;
        if let Ok(page) = page
            && let Ok(text) = page.text().await
        {
            recent_lag.merge(&lag.observe(&name, &text));
        }
    }
    let redis_clients = redis_clients(world).await.unwrap_or(-1);
    let (mut connections, mut backlog) = (-1, -1);
    if let Ok(sql) = world.sql().await {
        if let Ok(row) = sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'openrisk' AND application_name <> 'openrisk-verifier'",
                &[],
            )
            .await
        {
            connections = row.get(0);
        }
        if let Ok(row) = sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await {
            backlog = row.get(0);
        }
    }
    let probes = world.stats.staleness.lock().unwrap().clone();
    let mut recent: Vec<f64> = probes[(*since_probe).min(probes.len())..]
        .iter()
        .filter(|probe| probe.phase == "steady")
        .map(|probe| probe.seconds)
        .collect();
    *since_probe = probes.len();
    recent.sort_by(f64::total_cmp);
    let staleness_p99 = percentile(&recent, 0.99);
    Sample {
        at: world.started.elapsed().as_secs_f64(),
        rss_kb,
        connections,
        redis_clients,
        backlog,
        staleness_p99,
        lag_p99: recent_lag.quantile_bound(0.99),
    }
}

/// Clients connected to every Redis master (`INFO clients`).
async fn redis_clients(world: &World) -> anyhow::Result<i64> {
    let mut total = 0;
    for mut master in world.redis_masters().await? {
        let info: String = redis::cmd("INFO").arg("clients").query_async(&mut master).await?;
        let clients = info.lines().find_map(|line| line.strip_prefix("connected_clients:"));
        total += clients.and_then(|n| n.trim().parse::<i64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// A sampled quantity that must stay flat: its check's name, how it is printed, how it is read
/// off a sample, and the most its median may reach in the last third given the middle third's.
struct Flat<'a> {
    check: String,
    what: String,
    unit: &'static str,
    value: Reading<'a>,
    allowed: fn(f64) -> f64,
}

/// How one quantity is read off a sample (`None` when it was not measured then).
type Reading<'a> = Box<dyn Fn(&Sample) -> Option<f64> + 'a>;

impl<'a> Flat<'a> {
    fn new(check: &str, what: &str, unit: &'static str, value: Reading<'a>, allowed: fn(f64) -> f64) -> Self {
        Self { check: format!("soak: {check}"), what: what.to_owned(), unit, value, allowed }
    }
}

/// The processes whose RSS any sample holds, in name order.
fn process_names(samples: &[Sample]) -> Vec<&String> {
    let names: std::collections::BTreeSet<&String> = samples.iter().flat_map(|s| s.rss_kb.keys()).collect();
    names.into_iter().collect()
}

/// Every quantity the soak judges: each process's RSS, then the shared resources.
fn flat_quantities(samples: &[Sample]) -> Vec<Flat<'_>> {
    let count = |value: i64| (value >= 0).then_some(value as f64);
    let mut quantities: Vec<Flat> = process_names(samples)
        .into_iter()
        .map(|name| {
            Flat::new(
                &format!("{name} memory does not grow"),
                &format!("{name} RSS"),
                "MB",
                Box::new(move |s: &Sample| s.rss_kb.get(name).map(|&kb| kb as f64 / 1024.0)),
                |before| before * 1.5 + 30.0,
            )
        })
        .collect();
    quantities.extend([
        Flat::new(
            "Postgres connections do not leak",
            "Postgres connections",
            "",
            Box::new(move |s| count(s.connections)),
            |b| b + 10.0,
        ),
        Flat::new(
            "Redis connections do not leak",
            "Redis clients",
            "",
            Box::new(move |s| count(s.redis_clients)),
            |b| b + 10.0,
        ),
        Flat::new(
            "the outbox backlog does not build up",
            "outbox backlog",
            "rows",
            Box::new(move |s| count(s.backlog)),
            |b| b * 3.0 + 100.0,
        ),
        Flat::new(
            "the staleness window stays flat",
            "staleness window p99",
            "ms",
            Box::new(|s| s.staleness_p99.map(|v| v * 1e3)),
            |b| (b * 3.0).max(b + 250.0),
        ),
        Flat::new(
            "the invalidators' lag stays flat",
            "invalidator lag p99",
            "ms",
            Box::new(|s| s.lag_p99.filter(|v| v.is_finite()).map(|v| v * 1e3)),
            |b| (b * 3.0).max(b + 250.0),
        ),
    ]);
    quantities
}

/// Compares the middle third of the samples with the last third.
fn judge(samples: &[Sample]) -> Vec<(String, Vec<String>)> {
    if samples.len() < 6 {
        let failure = format!("only {} samples; run longer or sample more often", samples.len());
        return vec![("soak: enough samples to judge growth".to_owned(), vec![failure])];
    }
    let third = samples.len() / 3;
    let (middle, last) = (&samples[third..2 * third], &samples[2 * third..]);
    let mut checks = Vec::new();
    for Flat { check, what, unit, value, allowed } in flat_quantities(samples) {
        let typical = |part: &[Sample]| median(part.iter().filter_map(&value).collect());
        let mut failures = Vec::new();
        match (typical(middle), typical(last)) {
            (Some(before), Some(after)) => {
                println!(
                    "  soak: {what} (median of the middle third → of the last) {before:.1} {unit} → {after:.1} {unit}"
                );
                if after > allowed(before) {
                    failures.push(format!("{what} grew from {before:.1} {unit} to {after:.1} {unit}"));
                }
            }
            // A quantity no sample of a third could read (a process whose metrics hung) is no
            // evidence that it stayed flat.
            (before, _) => {
                let unread = if before.is_none() { "middle" } else { "last" };
                failures.push(format!("{what} was not measured in the {unread} third of the samples"));
            }
        }
        checks.push((check, failures));
    }
    checks
}

/// Samples every `--sample-every` seconds until `deadline`, into `record`.
async fn sample_until(world: &World, every: Duration, deadline: Instant, record: &Record) {
    let (mut since_probe, mut lag) = (0, LagScraper::default());
    while Instant::now() < deadline {
        let s = sample(world, &mut since_probe, &mut lag).await;
        let ms = |value: Option<f64>| value.map_or("—".into(), |p| format!("{:.1} ms", p * 1e3));
        println!(
            "  sample +{:>5.0}s rss {} | pg connections {} | redis clients {} | outbox {} | window p99 {} | lag p99 {}",
            s.at,
            s.rss_kb.iter().map(|(k, v)| format!("{k}={:.0}MB", *v as f64 / 1024.0)).collect::<Vec<_>>().join(" "),
            s.connections,
            s.redis_clients,
            s.backlog,
            ms(s.staleness_p99),
            ms(s.lag_p99)
        );
        record.samples.lock().unwrap().push(s);
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Injects a fault (each followed by the full check) every `--fault-every` seconds until shortly
/// before `deadline`, and records when each was injected.
async fn inject_until(
    world: &World,
    cfg: &Config,
    tally: &mut Tally,
    rng: &mut StdRng,
    deadline: Instant,
    record: &Record,
) -> anyhow::Result<()> {
    let fault_every = Duration::from_secs(cfg.fault_every.max(5));
    let mut schedule: Vec<faults::Fault> = Vec::new();
    loop {
        tokio::time::sleep(fault_every).await;
        if Instant::now() + Duration::from_secs(15) >= deadline {
            return Ok(());
        }
        if schedule.is_empty() {
            schedule = faults::round(cfg.redis, cfg.replica, false, cfg.network);
            schedule.shuffle(rng);
        }
        let fault = schedule.pop().expect("non-empty schedule");
        let index = {
            let mut injected = record.injected.lock().unwrap();
            injected.push((world.started.elapsed().as_secs_f64(), fault.name().to_owned()));
            injected.len() - 1
        };
        inject_and_check(world, tally, rng, fault, index, 0, 3000, Some(1000)).await?;
        world.set_phase("steady");
    }
}

/// Runs the soak until `--duration` has passed, into `record`, and judges its samples (which
/// the caller writes out, whether or not the run gets this far).
pub async fn run(
    world: &World,
    cfg: &Config,
    tally: &mut Tally,
    rng: &mut StdRng,
    record: &Record,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + cfg.duration;
    world.set_phase("steady");
    let ((), injected) = tokio::join!(
        sample_until(world, Duration::from_secs(cfg.sample_every.max(1)), deadline, record),
        inject_until(world, cfg, tally, rng, deadline, record)
    );
    injected?;
    let samples = record.samples.lock().unwrap().clone();
    println!(
        "  soak ran {:.0}s with {} faults and {} samples",
        started.elapsed().as_secs_f64(),
        record.injected.lock().unwrap().len(),
        samples.len()
    );
    for (name, failures) in judge(&samples) {
        tally.record(&name, &failures);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss_mb: impl Fn(usize) -> u64, backlog: impl Fn(usize) -> i64) -> Vec<Sample> {
        (0..30)
            .map(|i| Sample {
                at: i as f64 * 10.0,
                rss_kb: BTreeMap::from([("api".to_owned(), rss_mb(i) * 1024)]),
                connections: 12,
                redis_clients: 9,
                backlog: backlog(i),
                staleness_p99: Some(0.004),
                lag_p99: Some(0.003),
            })
            .collect()
    }

    fn failed(checks: &[(String, Vec<String>)]) -> Vec<&str> {
        checks.iter().filter(|(_, failures)| !failures.is_empty()).map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn a_flat_run_passes_every_check() {
        let checks = judge(&samples(|_| 30, |_| 0));
        assert_eq!(checks.len(), 6, "api RSS and five shared quantities");
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn memory_that_keeps_growing_fails_the_run() {
        let checks = judge(&samples(|i| 30 + 20 * i as u64, |_| 0));
        assert_eq!(failed(&checks), ["soak: api memory does not grow"]);
    }

    #[test]
    fn a_backlog_that_builds_up_fails_the_run() {
        let checks = judge(&samples(|_| 30, |i| if i < 20 { 5 } else { 5_000 }));
        assert_eq!(failed(&checks), ["soak: the outbox backlog does not build up"]);
    }

    #[test]
    fn a_quantity_unread_for_a_third_of_the_run_cannot_pass() {
        let mut hung = samples(|_| 30, |_| 0);
        for sample in &mut hung[20..] {
            sample.lag_p99 = None;
        }
        let checks = judge(&hung);
        assert_eq!(failed(&checks), ["soak: the invalidators' lag stays flat"]);
        let lag = checks.iter().find(|(name, _)| name.contains("lag")).unwrap();
        assert!(lag.1[0].contains("not measured in the last third"), "{lag:?}");
    }

    #[test]
    fn too_few_samples_cannot_pass() {
        assert_eq!(failed(&judge(&samples(|_| 30, |_| 0)[..5])), ["soak: enough samples to judge growth"]);
    }
}
