//! Invalidator benchmark: drain throughput for one and two replicas, and invalidation lag at
//! fixed write rates. Runs against the local Postgres and Redis in a database and key prefix of
//! its own, and prints a Markdown report.
//!
//! ```sh
//! cargo run --release -p openrisk-load-tests --bin invalidator_bench
//! cargo run --release -p openrisk-load-tests --bin invalidator_bench -- --events 20000 --seconds 3   # quick
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use openrisk_load_tests::histogram_quantile;
use openrisk_shared::config::WakeMode;
use openrisk_test_support::{RedisNamespace, TestDatabase};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

/// Every count and rate is at least 1: none would leave a run nothing to measure, or nothing to
/// divide by.
#[derive(Debug, Parser)]
struct Args {
    /// Events in the outbox for the drain-throughput runs.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i32).range(1..))]
    events: i32,
    /// Tenants the events and writes are spread over.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..))]
    tenants: i32,
    /// Risks per tenant written by the lag runs.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i32).range(1..))]
    risks: i32,
    /// Length of each fixed-rate lag run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Write rates (per second) for the lag runs.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100, 500, 2000], value_parser = clap::value_parser!(u32).range(1..))]
    rates: Vec<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = TestDatabase::create().await;
    let namespace = RedisNamespace::new();
    let sql = db.connect().await;
    sql.execute(
        "INSERT INTO tenants (slug, name) SELECT 'bench-' || g, 'bench ' || g FROM generate_series(1, $1) g",
        &[&args.tenants],
    )
    .await?;
    sql.execute(
        "INSERT INTO risks (tenant_id, title, impact, probability)
         SELECT t.id, 'risk ' || g, 1 + g % 5, 1 + g % 3 FROM tenants t, generate_series(1, $1) g",
        &[&args.risks],
    )
    .await?;
    sql.batch_execute("TRUNCATE cache_outbox").await?;
    sql.batch_execute("VACUUM ANALYZE").await?;
    let settings = |mode: WakeMode| {
        let mut settings = openrisk_test_support::settings_for(&db, &namespace);
        settings.invalidator.mode = mode;
        settings.invalidator.poll_interval_ms = 1000;
        settings
    };

    println!("## Invalidator drain throughput\n");
    println!("| replicas | events | seconds | events/s | events/s per replica |");
    println!("|---|---|---|---|---|");
    for replicas in [1, 2] {
        sql.execute(
            "INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
             SELECT (SELECT id FROM tenants ORDER BY id OFFSET g % $2 LIMIT 1), 'risks', 'UPDATE',
                    ARRAY['risk:' || gen_random_uuid(), 'risks']
             FROM generate_series(1, $1) g",
            &[&args.events, &args.tenants],
        )
        .await?;
        let started = Instant::now();
        let mut running = Vec::new();
        for _ in 0..replicas {
            running.push(openrisk_invalidator::start(settings(WakeMode::Poll)).await?);
        }
        wait_for_empty_outbox(&sql).await?;
        let seconds = started.elapsed().as_secs_f64();
        for replica in running {
            replica.shutdown(Duration::from_secs(10)).await;
        }
        let rate = f64::from(args.events) / seconds;
        println!("| {replicas} | {} | {seconds:.2} | {rate:.0} | {:.0} |", args.events, rate / f64::from(replicas));
    }

    println!("\n## Invalidation lag at fixed write rates (1 replica, LISTEN with park)\n");
    println!("| offered writes/s | achieved writes/s | events | lag p50 | lag p99 | lag max bucket |");
    println!("|---|---|---|---|---|---|");
    let risk_ids: Vec<(Uuid, Uuid)> = sql
        .query("SELECT tenant_id, id FROM risks ORDER BY random()", &[])
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let risk_ids = Arc::new(risk_ids);
    for &rate in &args.rates {
        let running = openrisk_invalidator::start(settings(WakeMode::Listen)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let written = Arc::new(AtomicU64::new(0));
        let writers = 8.min(rate.max(1));
        let period = Duration::from_secs_f64(f64::from(writers) / f64::from(rate));
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let client = db.connect().await;
            let (written, risk_ids) = (written.clone(), risk_ids.clone());
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
                let mut next = writer as usize;
                while Instant::now() < deadline {
                    ticks.tick().await;
                    let (tenant, id) = risk_ids[next % risk_ids.len()];
                    next += writers as usize;
                    let statement =
                        "UPDATE risks SET probability = 1 + probability % 5 WHERE tenant_id = $1 AND id = $2";
                    if client.execute(statement, &[&tenant, &id]).await.is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        wait_for_empty_outbox(&sql).await?;
        let lag = &running.metrics.lag_seconds;
        let events = running.metrics.events_processed.get();
        let ms = |q: f64| histogram_quantile(lag, q).map_or("-".to_owned(), |s| format!("{} ms", s.scaled(1000.0)));
        let achieved = written.load(Ordering::Relaxed) as f64 / args.seconds as f64;
        println!("| {rate} | {achieved:.0} | {events} | {} | {} | {} |", ms(0.5), ms(0.99), ms(1.0));
        running.shutdown(Duration::from_secs(10)).await;
    }
    Ok(())
}

/// How long the outbox may hold on to its backlog without shrinking before the benchmark gives up
/// on the invalidator: the drains take seconds, and any replica makes progress within one poll.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Waits until the outbox is empty; fails when its backlog has not shrunk for [`STALL_LIMIT`]
/// (an invalidator that stopped or never started), whatever the backlog's size.
async fn wait_for_empty_outbox(sql: &tokio_postgres::Client) -> anyhow::Result<()> {
    let (mut least, mut since) = (i64::MAX, Instant::now());
    loop {
        let left: i64 = sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get(0);
        if left == 0 {
            return Ok(());
        }
        if left < least {
            (least, since) = (left, Instant::now());
        }
        anyhow::ensure!(
            since.elapsed() < STALL_LIMIT,
            "the outbox stopped draining: {left} events left, none drained for {STALL_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    #[test]
    fn a_zero_count_or_rate_is_refused_by_clap() {
        assert!(Args::try_parse_from(["invalidator_bench", "--rates=10,20"]).is_ok());
        for bad in ["--rates=0", "--rates=100,0", "--events=0", "--tenants=0", "--risks=0", "--seconds=0"] {
            let error =
                Args::try_parse_from(["invalidator_bench", bad]).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {error}");
        }
    }
}
