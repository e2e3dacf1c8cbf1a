//! A single Redis node beside a Redis Cluster in one run: cached GET throughput of an API on
//! each (interleaved saturation rounds, as a ratio), and invalidation lag of an invalidator on
//! each, the cluster's with and without waiting for a replica (`WAIT`, `REDIS_REPLICAS_ACK` 1
//! and 0). Lag is the invalidator's own histogram (`openrisk_invalidator_lag_seconds`: row
//! change in Postgres → Redis confirmed the deletion), its change over a phase of paced writes
//! to a database only that invalidator drains.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use uuid::Uuid;

use super::prom;

/// An invalidator under measurement: the database whose outbox only it drains, its metrics,
/// and risks of that database to write to.
pub struct LagTarget {
    pub name: String,
    pub pg: tokio_postgres::Client,
    pub metrics: SocketAddr,
    pub risks: Vec<Uuid>,
}

/// What a lag phase measured, accumulated over rounds.
#[derive(Debug, Default, Clone)]
pub struct Lag {
    /// Histogram bucket changes `(upper bound, count)` over every round.
    buckets: Vec<(f64, f64)>,
    pub writes: u64,
    pub events: f64,
    /// Rounds in which the outbox was not empty 30 s after the last write.
    pub undrained: u64,
}

impl Lag {
    fn add(&mut self, delta: &[(f64, f64)]) {
        if self.buckets.is_empty() {
            self.buckets = delta.to_vec();
        } else {
            for ((_, total), (_, count)) in self.buckets.iter_mut().zip(delta) {
                *total += count;
            }
        }
    }

    /// Quantile `q` (0–1) of the lag, in milliseconds.
    pub fn ms(&self, q: f64) -> Option<prom::Quantile> {
        prom::quantile(&self.buckets, q).map(|seconds| seconds.scaled(1000.0))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "writes": self.writes,
            "events": self.events,
            "undrained_rounds": self.undrained,
        })
    }
}

/// The samples of a `/metrics` endpoint. A failed scrape is an error, not an empty one: an empty
/// "before" would turn a phase's histogram into the one of the process's whole life.
async fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<prom::PromSample>> {
    let answer = super::http::Conn::open(addr).await?.send(&super::http::Req::get("/metrics", None)).await?;
    anyhow::ensure!(answer.status == 200, "GET {addr}/metrics answered {}", answer.status);
    Ok(prom::parse(&String::from_utf8_lossy(&answer.body)))
}

async fn backlog(pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(pg.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get(0))
}

/// One phase: a single-row title update every `interval` for `duration` (each its own commit,
/// so each is one outbox event), then waits until the outbox is drained; adds the histogram's
/// change to `lag`.
pub async fn measure_lag(
    target: &LagTarget,
    duration: Duration,
    interval: Duration,
    lag: &mut Lag,
) -> anyhow::Result<()> {
    anyhow::ensure!(!target.risks.is_empty(), "{}: no risk to write to", target.name);
    let started = Instant::now();
    while backlog(&target.pg).await? > 0 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = scrape(target.metrics).await.with_context(|| format!("{}: metrics before the phase", target.name))?;
    let started = Instant::now();
    let mut next = started;
    let mut index = 0usize;
    while started.elapsed() < duration {
        let risk = target.risks[index % target.risks.len()];
        target
            .pg
            .execute("UPDATE risks SET title = $1 WHERE id = $2", &[&format!("bench lag #{index}"), &risk])
            .await?;
        index += 1;
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    let drained = Instant::now();
    while backlog(&target.pg).await? > 0 {
        if drained.elapsed() > Duration::from_secs(30) {
            lag.undrained += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The histogram is observed right after the deletion of the rows is committed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = scrape(target.metrics).await.with_context(|| format!("{}: metrics after the phase", target.name))?;
    let name = "openrisk_invalidator_lag_seconds";
    lag.add(&prom::bucket_delta(&prom::buckets(&before, name), &prom::buckets(&after, name)));
    lag.writes += index as u64;
    let events = "openrisk_invalidator_events_processed_total";
    lag.events += prom::sum(&after, events, &[]) - prom::sum(&before, events, &[]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_of_lag_add_up_bucket_by_bucket() {
        let mut lag = Lag::default();
        lag.add(&[(0.001, 1.0), (0.01, 2.0), (f64::INFINITY, 2.0)]);
        lag.add(&[(0.001, 1.0), (0.01, 2.0), (f64::INFINITY, 2.0)]);
        assert_eq!(lag.buckets, vec![(0.001, 2.0), (0.01, 4.0), (f64::INFINITY, 4.0)]);
        assert!(lag.ms(0.75).and_then(prom::Quantile::value).is_some_and(|ms| (ms - 5.5).abs() < 1e-9));
        assert_eq!(Lag::default().ms(0.5), None);
    }
}
