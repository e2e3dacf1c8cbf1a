//! Held-backlog benchmark: what the events of a tenant the invalidator holds back (its Redis
//! master down, or without a replica to confirm) cost the other tenants while they wait. The
//! claims move them aside as they meet them (`cache_outbox_held`), so no claim walks past them
//! on its way to the other tenants' events, and a read of the held tenant's new events
//! ([`outbox::peek`]) finds them by tenant and mover. Before they moved aside, both statements
//! cost 0.17 and 0.54 ms more per thousand held events (load_tests/RESULTS.md, 2026-12-07).
//!
//! One database per backlog size: its outbox is filled with that many events of the held
//! tenant, which claims with the tenant held move aside (the claim prepared on the empty table,
//! as an invalidator that was running when the outage began has it). Then, rounds interleaving
//! the sizes, a batch of another tenant's events is written and claimed as the invalidator
//! claims (its prepared statement and transaction settings, the held tenant held), the held
//! tenant's new events are read in the same transaction as the invalidator reads them, and the
//! claim is acknowledged (committed). Prints a Markdown report of both statements' round trips.
//!
//! ```sh
//! cargo run --release -p openrisk-load-tests --bin held_backlog_bench
//! cargo run -p openrisk-load-tests --bin held_backlog_bench -- --backlogs 0,1000 --rounds 1 --claims 3   # smoke
//! ```

use std::time::Instant;

use anyhow::ensure;
use clap::Parser;
use hdrhistogram::Histogram;
use openrisk_invalidator::outbox;
use openrisk_load_tests::bench::http::{micros, new_histogram, quantile_ms};
use openrisk_test_support::TestDatabase;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Events of the held tenant moved aside, one database each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0, 10_000, 100_000, 300_000])]
    backlogs: Vec<i64>,
    /// Rounds over every backlog size.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Claims per backlog size and round.
    #[arg(long, default_value_t = 40)]
    claims: usize,
    /// Events of the other tenant written before each claim (all of them claimed by it).
    #[arg(long, default_value_t = 100)]
    batch: i64,
}

/// The invalidator's default claim limit (`invalidator.batch_size`).
const CLAIM_LIMIT: u32 = 500;

/// One backlog size: its database, the session that claims there, and what it measured.
struct Backlog {
    backlog: i64,
    _db: TestDatabase,
    sql: Client,
    claim: Statement,
    held: Uuid,
    other: Uuid,
    /// Where the held tenant's new events start (a transaction id, as the invalidator keeps it).
    held_since: u64,
    claims: Histogram<u64>,
    peeks: Histogram<u64>,
}

impl Backlog {
    /// A migrated database with `backlog` events of one tenant moved aside by the invalidator's
    /// own claims, vacuumed and analysed as autovacuum leaves a table that only grows.
    async fn with_backlog(backlog: i64) -> anyhow::Result<Self> {
        let db = TestDatabase::create().await;
        let mut sql = db.connect().await;
        let (held, other) = (Uuid::new_v4(), Uuid::new_v4());
        let claim = outbox::prepare_claim(&sql).await?;
        write_events(&sql, held, backlog).await?;
        let (moved, taken) = outbox::move_all_aside(&mut sql, &claim, CLAIM_LIMIT, &[held]).await?;
        ensure!(taken == 0, "claims with the only tenant held took {taken} of its events");
        ensure!(moved as i64 == backlog, "{moved} of {backlog} held events moved aside");
        sql.batch_execute("VACUUM ANALYZE cache_outbox, cache_outbox_held").await?;
        let held_since: String = sql.query_one("SELECT pg_current_xact_id()::text", &[]).await?.get(0);
        Ok(Self {
            backlog,
            _db: db,
            sql,
            claim,
            held,
            other,
            held_since: held_since.parse()?,
            claims: new_histogram(),
            peeks: new_histogram(),
        })
    }

    /// Writes `batch` events of the other tenant, then claims, peeks and acknowledges them as the
    /// invalidator does, timing the claim and the peek (µs). Fails unless the claim took exactly
    /// the new events and the peek found none, so that what is timed is what the report says.
    async fn claim_once(&mut self, batch: i64) -> anyhow::Result<()> {
        write_events(&self.sql, self.other, batch).await?;
        let transaction = self.sql.transaction().await?;
        let started = Instant::now();
        let claimed = outbox::claim(&transaction, &self.claim, CLAIM_LIMIT, &[self.held]).await?;
        let claimed_in = started.elapsed();
        let started = Instant::now();
        let (peeked, _) = outbox::peek(&transaction, &[(self.held, self.held_since)]).await?;
        let peeked_in = started.elapsed();
        transaction.commit().await?;
        let others = claimed.events.iter().filter(|claimed| claimed.event.tenant_id == self.other).count();
        ensure!(
            others as i64 == batch && claimed.len() == others && claimed.moved_aside == 0,
            "claimed {} rows, {others} of {batch} new ones, and moved {} aside",
            claimed.len(),
            claimed.moved_aside
        );
        ensure!(peeked.is_empty(), "the held tenant wrote nothing new, yet {} events were read", peeked.len());
        self.claims.record(micros(claimed_in))?;
        self.peeks.record(micros(peeked_in))?;
        Ok(())
    }
}

/// Writes `count` outbox events of `tenant`, each tagged with a risk of its own and the list.
async fn write_events(sql: &Client, tenant: Uuid, count: i64) -> anyhow::Result<()> {
    sql.execute(
        "INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
         SELECT $1, 'risks', 'UPDATE', ARRAY['risk:' || gen_random_uuid(), 'risks'] FROM generate_series(1, $2::bigint)",
        &[&tenant, &count],
    )
    .await?;
    Ok(())
}

/// `p50 / p99` of `histogram` (µs) in milliseconds.
fn p50_p99(histogram: &Histogram<u64>) -> String {
    format!("{:.2} / {:.2}", quantile_ms(histogram, 0.5), quantile_ms(histogram, 0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut backlogs = Vec::with_capacity(args.backlogs.len());
    for &backlog in &args.backlogs {
        backlogs.push(Backlog::with_backlog(backlog).await?);
    }
    for _ in 0..args.rounds {
        for backlog in &mut backlogs {
            for _ in 0..args.claims {
                backlog.claim_once(args.batch).await?;
            }
        }
    }
    let base = backlogs.first().map(|first| first.claims.value_at_quantile(0.5) as f64);
    println!("## What a held tenant's backlog costs each claim ({} events of another tenant per claim)\n", args.batch);
    println!(
        "| held events moved aside | claims | claim p50 / p99 (ms) | claim p50 ÷ the first row's | peek p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|");
    for backlog in &backlogs {
        let ratio =
            base.map_or("-".to_owned(), |base| format!("{:.2}", backlog.claims.value_at_quantile(0.5) as f64 / base));
        println!(
            "| {} | {} | {} | {ratio} | {} |",
            backlog.backlog,
            backlog.claims.len(),
            p50_p99(&backlog.claims),
            p50_p99(&backlog.peeks)
        );
    }
    Ok(())
}
