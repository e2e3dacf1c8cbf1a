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
//! With `--window`, only the staleness window under load, for each `--invalidator-variant`
//! (see `window.rs`), into `window.json` and `window.md`.
//!
//! Writes `results.json`, `summary.md` and `latency.svg` into `--out`, prints the checks (no
//! timing assertions, only correctness) and exits non-zero when one failed.

mod args;
mod dataset;
mod freshness;
mod mix;
mod report;
mod resources;
mod saturation;
mod topology;
mod variants;
mod warmup;
mod window;
mod wrk;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use openrisk_shared::redis_connection::{RedisTarget, Timeouts};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::args::Args;
use crate::dataset::{Checks, DataSet};
use crate::report::Report;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut checks = Checks::default();
    let mut rng = SmallRng::seed_from_u64(42);
    let data = DataSet::load(&args, &mut rng).await?;
    if args.window {
        return window_only(&args, &data, checks).await;
    }
    let mut redis = RedisTarget::parse(&args.redis_url)?.connect(Timeouts::all(Duration::from_secs(10))).await?;

    let workloads = warmup::warm_up(&args, &data, &mut redis, &mut checks).await?;
    let saturation = saturation::run(&args, &workloads, &mut redis, &mut checks).await?;
    let wrk = if args.wrk { Some(wrk::run(&args, &workloads, &mut checks).await) } else { None };
    let mut fixed = mix::fixed_rate(&args, &workloads, &mut checks).await?;
    let dashboard = mix::dashboard_mix(&args, &data, &mut checks).await?;
    fixed.push(dashboard.steady);
    let (freshness, freshness_report) =
        freshness::run(&args, &data, Arc::clone(&dashboard.workload), &mut checks).await?;
    report::plot_latency(&args, &fixed, &freshness)?;
    let many_variants = variants::run(&args, &data.tenants[0], &data.risks, &data.pg, &mut redis, &mut checks).await?;
    let topology = match args.cluster_cached {
        Some(cluster) => Some(topology::run(&args, cluster, &workloads.detail.cached, &mut checks).await?),
        None => None,
    };

    let passed = checks.0.iter().filter(|check| check.ok).count();
    let failed = checks.0.len() - passed;
    Report {
        data_set: data.summary,
        body_bytes: workloads.body_bytes,
        saturation,
        wrk,
        fixed_rate: mix::fixed_rate_report(&args, &fixed),
        dashboard_mix: dashboard.report,
        freshness: freshness_report,
        many_variants,
        topology,
        checks: checks.0,
    }
    .write(&args)?;
    println!("wrote {}/results.json, summary.md, latency.svg", args.out.display());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `--window`: warms the hot details, measures the window for each invalidator variant.
async fn window_only(args: &Args, data: &DataSet, mut checks: Checks) -> anyhow::Result<()> {
    let hot: Vec<openrisk_load_tests::bench::http::Req> = data.hot.iter().map(dataset::detail).collect();
    let failed = dataset::touch_all(args.cached, &hot, 16).await?;
    checks.check("warm-up answered 200 for every hot risk", failed == 0, format!("{failed} of {} failed", hot.len()));
    let workload = openrisk_load_tests::bench::http::Workload::uniform("cached GET /risks/{id}", &hot);
    let report = window::run(args, data, workload, &mut checks).await?;
    std::fs::write(args.out.join("window.json"), serde_json::to_string_pretty(&report)?)?;
    let failed = checks.0.iter().filter(|check| !check.ok).count();
    println!("wrote {}/window.json, window.md; {failed} checks failed", args.out.display());
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
