//! What a run prints at its end (the workload's totals, the staleness window overall, outside
//! faults, by tenant and by the phase its commits came in, the invalidation lag, the dead
//! letters) and the checks only the whole run can make: every probe answered in time, on every
//! tenant, and never older than an acknowledged write, API errors only while Postgres was down,
//! tenant isolation, and misses read from the replica in a replica run.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::probe::ProbeWindow;
use crate::world::World;
use crate::{Tally, faults};

/// An API error that came this long after its request was sent: the API held the request.
const HELD_REQUEST: Duration = Duration::from_secs(10);

/// The `p` quantile of `sorted`; `None` for no sample.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(last as f64 * p).round() as usize])
}

/// The staleness windows of probes whose commit came during one phase (a fault's name, `steady`, …).
struct PhaseWindows {
    name: String,
    /// Seconds, sorted.
    windows: Vec<f64>,
}

/// The probes' windows, sorted by length, grouped by phase, the phase with the longest window
/// first: which faults the tail of the window comes from.
fn windows_by_phase(sorted: &[ProbeWindow]) -> Vec<PhaseWindows> {
    let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for probe in sorted {
        phases.entry(&probe.phase).or_default().push(probe.seconds);
    }
    let mut phases: Vec<PhaseWindows> =
        phases.into_iter().map(|(name, windows)| PhaseWindows { name: name.to_owned(), windows }).collect();
    let longest = |phase: &PhaseWindows| phase.windows.last().copied().unwrap_or_default();
    phases.sort_by(|a, b| longest(b).total_cmp(&longest(a)));
    phases
}

/// One line of a window breakdown: `name`, how many probes, and the p50, p99 and max of their
/// `windows` (seconds, sorted).
fn print_windows(name: &str, windows: &[f64]) {
    let (p50, p99, max) = (percentile(windows, 0.5), percentile(windows, 0.99), windows.last().copied());
    println!("    {name:<28} {:>5} probes: p50 {}, p99 {}, max {}", windows.len(), ms(p50), ms(p99), ms(max));
}

/// `seconds` in milliseconds, or "n/a" for a statistic of no sample.
pub fn ms(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "n/a".to_owned(), |seconds| format!("{:.1} ms", seconds * 1e3))
}

/// Prints the summary of the run that began at `started` and records the checks it makes.
pub async fn print(world: &World, tally: &mut Tally, started: Instant) {
    let stats = &world.stats;
    let reads = stats.reads.load(Ordering::Relaxed);
    let hits = stats.hits.load(Ordering::Relaxed);
    println!("summary (seed {}, {:.0}s):", world.cfg.seed, started.elapsed().as_secs_f64());
    println!(
        "  reads {reads} (hit rate {:.1} %), API writes {} (2xx), SQL writes {} ({} more refused by constraints or outages)",
        if reads > 0 { hits as f64 * 100.0 / reads as f64 } else { 0.0 },
        stats.api_writes.load(Ordering::Relaxed),
        stats.sql_writes.load(Ordering::Relaxed),
        stats.sql_write_failures.load(Ordering::Relaxed)
    );
    let mut samples: Vec<ProbeWindow> = stats.staleness.lock().unwrap().clone();
    samples.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let all: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
    let steady: Vec<f64> = samples
        .iter()
        .filter(|s| s.phase == "steady" || s.phase == "baseline" || s.phase == "warm-up")
        .map(|s| s.seconds)
        .collect();
    let timeouts = stats.probe_timeouts.load(Ordering::Relaxed);
    println!(
        "  staleness window (SQL commit → first fresh read through the cached API), {} probes: p50 {}, p99 {}, max {}; outside faults ({}): p50 {}, p99 {}, max {}; {timeouts} probes timed out (30 s)",
        all.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied()),
        steady.len(),
        ms(percentile(&steady, 0.5)),
        ms(percentile(&steady, 0.99)),
        ms(steady.last().copied()),
    );
    let mut stale = if timeouts > 0 {
        vec![format!("{timeouts} probes never read their commit through the cached API within 30 s")]
    } else if all.is_empty() {
        vec!["no staleness probe completed, so the window was not measured".to_owned()]
    } else {
        Vec::new()
    };
    // On a Redis Cluster each tenant's entries live on its slot's master: a slow master shows here.
    println!("  staleness window by tenant:");
    let mut measured = 0;
    for tenant in &world.tenants {
        let windows: Vec<f64> = samples.iter().filter(|s| s.tenant == tenant.id).map(|s| s.seconds).collect();
        measured += usize::from(!windows.is_empty());
        print_windows(&tenant.slug, &windows);
    }
    if measured < world.tenants.len() {
        stale.push(format!("the window was measured on {measured} of the {} tenants", world.tenants.len()));
    }
    tally.record("every staleness probe read its commit within 30 s, on every tenant", &stale);
    let probe_reads = stats.probe_reads.load(Ordering::Relaxed);
    let went_back = stats.probe_went_back.lock().unwrap().clone();
    println!(
        "  probe reads that showed an older title than a read before them, the newer still in its window: {} of {probe_reads}{}",
        went_back.len(),
        went_back.first().map(|first| format!(" (first: {first})")).unwrap_or_default()
    );
    let acknowledged = stats.probe_acknowledged.load(Ordering::Relaxed);
    let mut violations = stats.probe_violations.lock().unwrap().clone();
    if acknowledged == 0 {
        violations
            .push("no look at the outbox found the probe's events acknowledged, so no read was checked".to_owned());
    }
    tally.record(
        &format!(
            "no read of the probe's risk ({probe_reads} reads, {acknowledged} rounds found acknowledged) showed a title older than an acknowledged one"
        ),
        &violations,
    );
    println!("  staleness window by phase (the fault a probe's commit came during), worst first:");
    for phase in windows_by_phase(&samples) {
        print_windows(&phase.name, &phase.windows);
    }
    if let Ok(sql) = world.sql().await {
        let (from, to) = world.poison_ids.lock().unwrap().unwrap_or((0, -1));
        if let Ok(row) = sql
            .query_one(
                "SELECT count(*), coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), 0),
                        coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), 0), coalesce(max(lag), 0)
                 FROM (SELECT extract(epoch FROM acked_at - created_at)::float8 AS lag FROM verifier_outbox_log
                       WHERE acked_at IS NOT NULL AND id NOT BETWEEN $1 AND $2) AS l",
                &[&from, &to],
            )
            .await
        {
            println!(
                "  invalidation lag (outbox row created → acknowledged), {} events: p50 {:.1} ms, p99 {:.1} ms, max {:.2} s",
                row.get::<_, i64>(0),
                row.get::<_, f64>(1) * 1e3,
                row.get::<_, f64>(2) * 1e3,
                row.get::<_, f64>(3)
            );
        }
        if let Ok(row) = sql.query_one("SELECT count(*) FROM cache_outbox_dead_letter", &[]).await {
            println!("  dead letters: {}", row.get::<_, i64>(0));
        }
    }
    let errors = stats.errors.lock().unwrap().clone();
    let (during_pg, outside): (Vec<_>, Vec<_>) =
        errors.iter().partition(|e| world.in_pg_window(e.sent) || world.in_pg_window(e.at));
    println!(
        "  API errors (5xx or no answer): {} in all, {} sent or failing while Postgres was down (restart + {}s grace), {} outside",
        errors.len(),
        during_pg.len(),
        faults::PG_GRACE.as_secs(),
        outside.len()
    );
    let outside: Vec<String> = outside
        .iter()
        .map(|e| format!("+{:.1}s {}", e.at.duration_since(world.started).as_secs_f64(), e.what))
        .collect();
    tally.record("no API errors outside the windows where Postgres was down", &outside);
    // Failures that took most of the client's timeout: a request the API held instead of
    // answering or refusing, which the windows excuse but which an operator would notice.
    let held: Vec<String> = errors
        .iter()
        .filter(|e| e.at.duration_since(e.sent) >= HELD_REQUEST)
        .map(|e| format!("+{:.1}s {}", e.sent.duration_since(world.started).as_secs_f64(), e.what))
        .collect();
    if !held.is_empty() {
        println!("  {} API errors came only after {}s or more:", held.len(), HELD_REQUEST.as_secs());
        for line in held.iter().take(5) {
            println!("       {line}");
        }
    }
    if world.replica.is_some() {
        replica_report(world, tally).await;
    }
    let probes = stats.isolation_probes.load(Ordering::Relaxed);
    let violations = stats.isolation_violations.load(Ordering::Relaxed);
    let isolation: Vec<String> = if violations > 0 {
        vec![format!("{violations} of {probes} cross-tenant reads answered 2xx")]
    } else if probes == 0 {
        vec!["no cross-tenant read was made, so isolation was not checked".to_owned()]
    } else {
        Vec::new()
    };
    tally.record(&format!("tenant isolation ({probes} cross-tenant reads, all refused)"), &isolation);
}

/// Where the cached API read its misses, from its metrics (over every process of the run): a
/// replica run must have used the replica.
async fn replica_report(world: &World, tally: &mut Tally) {
    let routing = match world.read_routing().await {
        Ok(routing) => routing,
        Err(error) => {
            tally.record("the cached API read misses from the replica", &[format!("no metrics: {error}")]);
            return;
        }
    };
    println!(
        "  misses and bypassed reads: {} from the replica, {} from the primary ({} because the replica was behind their replay floor)",
        routing.replica, routing.primary, routing.behind_floor
    );
    let unused = if routing.replica > 0.0 { Vec::new() } else { vec!["no read went to the replica".to_owned()] };
    tally.record("the cached API read misses from the replica", &unused);
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        assert_eq!(percentile(&[], 0.99), None);
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), Some(51.0));
        assert_eq!(percentile(&samples, 0.99), Some(99.0));
    }

    #[test]
    fn windows_are_grouped_by_phase_with_the_longest_first() {
        let sorted =
            [(0.004, "steady"), (0.006, "kill-master"), (0.008, "steady"), (0.9, "pause-redis"), (2.5, "kill-master")]
                .map(|(seconds, phase)| ProbeWindow { seconds, phase: phase.to_owned(), tenant: Uuid::nil() });
        let phases = windows_by_phase(&sorted);
        let summary: Vec<(&str, Vec<f64>)> =
            phases.iter().map(|phase| (phase.name.as_str(), phase.windows.clone())).collect();
        assert_eq!(
            summary,
            [("kill-master", vec![0.006, 2.5]), ("pause-redis", vec![0.9]), ("steady", vec![0.004, 0.008])]
        );
    }

    #[test]
    fn a_statistic_of_no_sample_is_not_available() {
        assert_eq!(ms(None), "n/a");
        assert_eq!(ms(Some(0.0123)), "12.3 ms");
    }
}
