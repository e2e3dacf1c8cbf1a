//! A single Redis node beside a Redis Cluster (with `--cluster-cached`): the same cached risk
//! detail on each, and invalidation lag on each (see `bench::topology`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use openrisk_load_tests::bench::http::{Conn, Req, Workload, closed_loop};
use openrisk_load_tests::bench::prom::{self, Quantile};
use openrisk_load_tests::bench::topology::{Lag, LagTarget, measure_lag};
use openrisk_shared::CacheStatus;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::args::Args;
use crate::dataset::{Checks, detail, live_risks, read_tokens, touch_all};

/// The same cached risk detail through an API on the single node and one on the cluster, in
/// interleaved saturation rounds; then invalidation lag of the node's invalidator, the cluster's
/// (waiting for a replica) and, with `--cluster-ack0-database-url`, the cluster's without.
pub async fn run(
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
    let pg = openrisk_shared::db::connect(database_url, "openrisk-bench", &Default::default()).await?;
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
    // The node's hot risks again: the freshness and many-variants phases wrote to some of them,
    // and each run below must be all hits.
    let failed = touch_all(args.cached, &node_detail.reqs, 16).await?;
    checks.check("the node's API answers every hot risk again", failed == 0, format!("{failed} failed"));
    let cluster_detail = Workload::uniform("cached GET /risks/{id} on the cluster", &hot);
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
            checks.run_cached(&result);
            into.push(result.throughput());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;

    let mut targets = Vec::new();
    let node_pg = openrisk_shared::db::connect(&args.database_url, "openrisk-bench-lag", &Default::default()).await?;
    targets.push(LagTarget {
        name: "node".into(),
        risks: lag_risks(&node_pg).await?,
        pg: node_pg,
        metrics: args.invalidator_metrics,
    });
    targets.push(LagTarget { name: "cluster, WAIT 1".into(), risks: lag_risks(&pg).await?, pg, metrics });
    if let (Some(url), Some(metrics)) = (&args.cluster_ack0_database_url, args.cluster_ack0_invalidator_metrics) {
        let pg = openrisk_shared::db::connect(url, "openrisk-bench-lag", &Default::default()).await?;
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
            "  {:<18} {} writes, {} events: lag p50 {} ms, p90 {} ms, p99 {} ms",
            target.name,
            lag.writes,
            lag.events,
            prom::show(lag.ms(0.5)),
            prom::show(lag.ms(0.9)),
            prom::show(lag.ms(0.99))
        );
        checks.check(
            &format!("invalidation lag ({}): every write was invalidated and the outbox drained", target.name),
            lag.writes > 0 && lag.events >= lag.writes as f64 && lag.undrained == 0,
            format!("{} writes, {} events, {} rounds not drained", lag.writes, lag.events, lag.undrained),
        );
        lag_json.insert(target.name.clone(), lag.to_json());
    }
    // No ratio of a quantile above the histogram's highest bound: its value is not known.
    let ratio = |a: Option<Quantile>, b: Option<Quantile>| {
        a.and_then(Quantile::value).zip(b.and_then(Quantile::value)).map(|(a, b)| a / b)
    };
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
