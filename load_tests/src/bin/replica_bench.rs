//! Read-replica benchmark: cache-miss throughput and the primary's CPU time with and without a
//! streaming replica, in interleaved phases of one run. Starts a private primary and replica
//! (`test-support`'s `ReplicaPair`), seeds them, runs the API in-process twice (without and with
//! `DATABASE_REPLICA_URLS`), and prints a Markdown report.
//!
//! Misses are risk details whose entries were unlinked while their tag versions (and replay
//! floors) stayed, as after expiry or an invalidation: a cold cache, whose versions do not exist
//! yet, reads the primary by design (see `docs/consistency.md`).
//!
//! ```sh
//! cargo run --release -p openrisk-load-tests --bin replica_bench
//! cargo run -p openrisk-load-tests --bin replica_bench -- --risks 200 --seconds 1 --rounds 1   # smoke
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use openrisk_api::auth::{Role, create_token};
use openrisk_api::{AppOptions, Application};
use openrisk_load_tests::bench::http::{Req, Workload, closed_loop};
use openrisk_load_tests::bench::procfs;
use openrisk_test_support::{RedisNamespace, ReplicaPair, TestDatabase};
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Risks seeded (one tenant); each is one distinct miss.
    #[arg(long, default_value_t = 20_000)]
    risks: i32,
    /// Concurrent connections per phase.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of each phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the two phases, interleaved.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// One API instance and the Redis namespace its cache uses.
struct Instance {
    label: &'static str,
    app: Application,
    redis: RedisNamespace,
}

impl Instance {
    async fn start(label: &'static str, db: &TestDatabase, replica_url: Option<String>) -> anyhow::Result<Self> {
        let redis = RedisNamespace::new();
        let mut settings = openrisk_test_support::settings_for(db, &redis);
        settings.pool.max_connections = Some(32);
        settings.database.replica_urls = replica_url.into_iter().collect();
        let app = Application::spawn(settings, AppOptions::default()).await?;
        Ok(Self { label, app, redis })
    }

    /// Unlinks every cached entry, keeping tag versions and replay floors.
    async fn evict_entries(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.redis.url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let entries: Vec<String> = self.redis.keys().into_iter().filter(|key| key.contains(":e2:")).collect();
        for chunk in entries.chunks(500) {
            let _: i64 = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await?;
        }
        Ok(())
    }
}

/// CPU ticks of the primary's postmaster and every process it started (backends, WAL sender).
fn primary_cpu_ticks(postmaster: u32) -> u64 {
    std::iter::once(postmaster)
        .chain(procfs::children(postmaster))
        .filter_map(procfs::sample)
        .map(|sample| sample.cpu_ticks)
        .sum()
}

/// The sum of a counter's samples in an instance's metrics.
fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pair = tokio::task::spawn_blocking(ReplicaPair::shared).await?;
    let db = TestDatabase::create_on(&pair.primary_admin_url()).await;
    let sql = db.connect().await;
    let tenant: Uuid =
        sql.query_one("INSERT INTO tenants (slug, name) VALUES ('bench', 'bench') RETURNING id", &[]).await?.get(0);
    let ids: Vec<Uuid> = sql
        .query(
            "INSERT INTO risks (tenant_id, title, impact, probability)
             SELECT $1, 'risk ' || g, 1 + g % 5, 1 + g % 3 FROM generate_series(1, $2) g RETURNING id",
            &[&tenant, &args.risks],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    sql.batch_execute("TRUNCATE cache_outbox").await?;
    sql.batch_execute("VACUUM ANALYZE").await?;
    let primary = Instance::start("primary only", &db, None).await?;
    let replica = Instance::start("with the replica", &db, Some(pair.replica_url(&db.name))).await?;
    let token: Arc<str> =
        format!("Bearer {}", create_token(&primary.app.state.db.conn, tenant, Role::Viewer, "bench").await?.1).into();
    let reqs: Vec<Req> = ids.iter().map(|id| Req::get(format!("/api/v1/risks/{id}"), Some(token.clone()))).collect();
    let postmaster = pair.primary_pid().ok_or_else(|| anyhow::anyhow!("no primary postmaster pid"))?;

    // Two passes per instance: the first creates the versions, the second (after the entries are
    // unlinked) records their replay floors; then every measured miss finds versions and floors.
    for instance in [&primary, &replica] {
        for _ in 0..2 {
            instance.evict_entries().await?;
            let warm = Workload::uniform("warm-up", &reqs);
            closed_loop(instance.app.addr, warm, args.connections, Duration::from_secs(args.seconds)).await?;
        }
    }

    println!(
        "| phase | answered/s | first-time (miss) answers/s | p50 ms | p99 ms | primary CPU s | primary CPU ms per 1000 answers | replica reads |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for _ in 0..args.rounds {
        for instance in [&primary, &replica] {
            instance.evict_entries().await?;
            let metrics_before = instance.app.state.render_metrics();
            let ticks_before = primary_cpu_ticks(postmaster);
            let workload = Workload::uniform(instance.label, &reqs);
            let result =
                closed_loop(instance.app.addr, workload, args.connections, Duration::from_secs(args.seconds)).await?;
            let cpu_secs = (primary_cpu_ticks(postmaster).saturating_sub(ticks_before)) as f64 / 100.0;
            let metrics_after = instance.app.state.render_metrics();
            let replica_reads = counter(&metrics_after, "openrisk_db_reads_total{target=\"replica\"}")
                - counter(&metrics_before, "openrisk_db_reads_total{target=\"replica\"}");
            let elapsed = result.elapsed.as_secs_f64();
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} |",
                instance.label,
                result.throughput(),
                result.tally.first_time as f64 / elapsed,
                result.ms(50.0),
                result.ms(99.0),
                cpu_secs,
                cpu_secs * 1e6 / result.tally.ok.max(1) as f64,
                replica_reads
            );
            anyhow::ensure!(
                result.tally.non_2xx == 0 && result.tally.errors == 0,
                "{}: {} non-2xx, {} errors",
                instance.label,
                result.tally.non_2xx,
                result.tally.errors
            );
        }
    }
    Ok(())
}
