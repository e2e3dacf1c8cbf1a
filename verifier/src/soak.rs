//! Soak mode: the workload runs for `--duration` with a fault every `--fault-every` seconds
//! (each followed by the full check), and every `--sample-every` seconds the RSS of each
//! process, the Postgres connections and the staleness window are sampled. Growth from the
//! middle third of the run to the last third fails the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::world::World;
use crate::{Config, Tally, faults, inject_and_check, percentile};

#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    rss_kb: BTreeMap<String, u64>,
    connections: i64,
    backlog: i64,
    /// p99 of the steady-state staleness probes since the previous sample (seconds).
    staleness_p99: Option<f64>,
}

async fn sample(world: &World, since_probe: &mut usize) -> Sample {
    let mut rss_kb = BTreeMap::new();
    for proc in [&world.api, &world.api_ref].into_iter().chain(world.invalidators.iter()) {
        let proc = proc.lock().await;
        if let Some(rss) = proc.rss_kb() {
            rss_kb.insert(proc.spec.name.clone(), rss);
        }
    }
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
        if let Ok(row) = sql.query_one("SELECT count(*) FROM cache_outbox", &[]).await {
            backlog = row.get(0);
        }
    }
    let probes = world.stats.staleness.lock().unwrap().clone();
    let mut recent: Vec<f64> = probes[(*since_probe).min(probes.len())..]
        .iter()
        .filter(|(_, phase)| phase == "steady")
        .map(|(window, _)| *window)
        .collect();
    *since_probe = probes.len();
    recent.sort_by(f64::total_cmp);
    let staleness_p99 = (!recent.is_empty()).then(|| percentile(&recent, 0.99));
    Sample { at: world.started.elapsed().as_secs_f64(), rss_kb, connections, backlog, staleness_p99 }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Compares the middle third of the samples with the last third.
fn judge(samples: &[Sample]) -> Vec<(String, Vec<String>)> {
    let mut checks = Vec::new();
    if samples.len() < 6 {
        checks.push((
            "soak: enough samples to judge growth".to_owned(),
            vec![format!("only {} samples; run longer or sample more often", samples.len())],
        ));
        return checks;
    }
    let third = samples.len() / 3;
    let (middle, last) = (&samples[third..2 * third], &samples[2 * third..]);
    let names: Vec<String> = samples
        .iter()
        .flat_map(|s| s.rss_kb.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for name in names {
        let series =
            |part: &[Sample]| median(part.iter().filter_map(|s| s.rss_kb.get(&name).map(|&v| v as f64)).collect());
        let mut failures = Vec::new();
        if let (Some(before), Some(after)) = (series(middle), series(last)) {
            println!("  soak: {name} RSS median {:.1} MB → {:.1} MB", before / 1024.0, after / 1024.0);
            if after > before * 1.5 + 30.0 * 1024.0 {
                failures.push(format!("RSS grew from {:.1} MB to {:.1} MB", before / 1024.0, after / 1024.0));
            }
        }
        checks.push((format!("soak: {name} memory does not grow"), failures));
    }
    let max_conn = |part: &[Sample]| part.iter().map(|s| s.connections).max().unwrap_or(0);
    let (before, after) = (max_conn(middle), max_conn(last));
    println!("  soak: Postgres connections max {before} → {after}");
    let failures =
        if after > before + 10 { vec![format!("connections grew from {before} to {after}")] } else { Vec::new() };
    checks.push(("soak: Postgres connections do not leak".to_owned(), failures));
    let lag = |part: &[Sample]| median(part.iter().filter_map(|s| s.staleness_p99).collect());
    let mut failures = Vec::new();
    if let (Some(before), Some(after)) = (lag(middle), lag(last)) {
        println!("  soak: steady staleness p99 (median per sample) {:.1} ms → {:.1} ms", before * 1e3, after * 1e3);
        if after > (before * 3.0).max(before + 0.25) {
            failures.push(format!("staleness p99 grew from {:.1} ms to {:.1} ms", before * 1e3, after * 1e3));
        }
    }
    checks.push(("soak: invalidation lag stays flat".to_owned(), failures));
    checks
}

pub async fn run(world: &World, cfg: &Config, tally: &mut Tally, rng: &mut StdRng) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let sample_every = Duration::from_secs(cfg.sample_every.max(1));
    let fault_every = Duration::from_secs(cfg.fault_every.max(5));
    let mut next_sample = Instant::now();
    let mut next_fault = Instant::now() + fault_every;
    let mut schedule: Vec<faults::Fault> = Vec::new();
    let mut samples = Vec::new();
    let mut since_probe = 0;
    let mut index = 0;
    world.set_phase("steady");
    while Instant::now() < deadline {
        let wake = next_sample.min(next_fault).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if now >= next_sample {
            let s = sample(world, &mut since_probe).await;
            println!(
                "  sample +{:>5.0}s rss {} | pg connections {} | outbox {} | staleness p99 {}",
                s.at,
                s.rss_kb.iter().map(|(k, v)| format!("{k}={:.0}MB", *v as f64 / 1024.0)).collect::<Vec<_>>().join(" "),
                s.connections,
                s.backlog,
                s.staleness_p99.map_or("—".into(), |p| format!("{:.1} ms", p * 1e3))
            );
            samples.push(s);
            next_sample = now + sample_every;
        }
        if now >= next_fault && now + Duration::from_secs(15) < deadline {
            if schedule.is_empty() {
                schedule = faults::round(cfg.redis, cfg.replica, false, cfg.network);
                schedule.shuffle(rng);
            }
            let fault = schedule.pop().expect("non-empty schedule");
            inject_and_check(world, tally, rng, fault, index, 0, 3000, Some(1000)).await?;
            world.set_phase("steady");
            index += 1;
            next_fault = Instant::now() + fault_every;
        }
    }
    println!("  soak ran {:.0}s with {index} faults and {} samples", started.elapsed().as_secs_f64(), samples.len());
    for (name, failures) in judge(&samples) {
        tally.record(&name, &failures);
    }
    Ok(())
}
