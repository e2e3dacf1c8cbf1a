//! Resharding benchmark: what a tenant's invalidations and lookups cost while its slot migrates
//! from one master to another, for several waits before the cluster client sends a refused call
//! again (`Timeouts::refusal_retry`), one migration per wait, interleaved over rounds. Starts a
//! private Redis Cluster (3 masters, a replica each), caches one tenant's risk details, and moves
//! the tenant's slot onward a few keys at a time (as the verifier's `migrate-tenant-slot` fault
//! does) while one caller invalidates (as the invalidator does: one replica must confirm) and
//! another looks entries up (as the API does), each back to back. Prints a Markdown report.
//!
//! An invalidation is the protocol's script, which Redis refuses (`TRYAGAIN`) for as long as the
//! slot migrates, then the fallback that replaces the versions one by one: its time is the
//! staleness window of every event the invalidator applies for that tenant meanwhile.
//!
//! ```sh
//! cargo run --release -p openrisk-load-tests --bin reshard_bench
//! cargo run -p openrisk-load-tests --bin reshard_bench -- --entries 100 --rounds 1   # smoke
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use hdrhistogram::Histogram;
use openrisk_load_tests::bench::http::{micros, new_histogram, quantile_ms};
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup, ReplicaAck};
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace};
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Risk details cached for the tenant (each an entry, a version and a member set); the slot
    /// to move is the first one's.
    #[arg(long, default_value_t = 1_300, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    entries: usize,
    /// Waits before a refused call is sent again, in milliseconds, one migration each per round.
    #[arg(long, value_delimiter = ',', default_values_t = vec![300, 25, 5, 1])]
    waits_ms: Vec<u64>,
    /// Rounds of one migration per wait.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Keys moved per `MIGRATE` (none would end the migration before it began).
    #[arg(long, default_value_t = 5, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    batch: usize,
    /// Pause between two `MIGRATE`s.
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
}

/// What the invalidator waits for on a cluster by default.
const ONE_REPLICA: ReplicaAck = ReplicaAck { replicas: 1, timeout: Duration::from_millis(500) };

/// A cached entry's body, about the size of a risk detail's.
const BODY: [u8; 2_700] = [b'x'; 2_700];

/// One tenant's entries on the private cluster.
struct Tenant {
    keyspace: Keyspace,
    id: Uuid,
    entries: Vec<(String, Vec<Tag>)>,
}

impl Tenant {
    /// Caches `count` risk details, each under its own risk's tag and the list's.
    async fn cache(conn: &mut RedisConnection, keyspace: Keyspace, count: usize) -> anyhow::Result<Self> {
        let id = Uuid::new_v4();
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let risk = Uuid::new_v4();
            let key = keyspace.entry_key(id, 1, "risk", &[("id", risk.to_string())]);
            let tags = vec![Tag::risks(), Tag::risk(risk)];
            let Lookup::Miss(snapshot) = protocol::lookup(conn, &keyspace, id, &key, &tags).await? else {
                anyhow::bail!("a new entry was a hit");
            };
            let snapshot = protocol::create_missing_versions(conn, &keyspace, id, &snapshot, 3_600).await?;
            let fill = Fill { entry_key: &key, body: &BODY, etag: "e", ttl_secs: 3_600, dependencies_ttl_secs: 3_600 };
            protocol::fill(conn, &keyspace, id, &snapshot, fill).await?;
            entries.push((key, tags));
        }
        Ok(Self { keyspace, id, entries })
    }

    /// Invalidates the tags of entry `n` (one risk and the list), as for an update of that risk.
    async fn invalidate(&self, conn: &mut RedisConnection, n: usize) -> bool {
        let (_, tags) = &self.entries[n % self.entries.len()];
        protocol::invalidate_replicated(conn, &self.keyspace, self.id, tags, ONE_REPLICA, None).await.is_ok()
    }

    /// Looks entry `n` up, as a read of that risk does.
    async fn look_up(&self, conn: &mut RedisConnection, n: usize) -> bool {
        let (key, tags) = &self.entries[n % self.entries.len()];
        protocol::lookup(conn, &self.keyspace, self.id, key, tags).await.is_ok()
    }
}

/// Latencies of one kind of call that succeeded, and how many failed: a failure returns after
/// however long the client gave up at, which is no latency of an answer.
struct Calls {
    latency_us: Histogram<u64>,
    failed: u64,
}

impl Calls {
    fn new() -> Self {
        Self { latency_us: new_histogram(), failed: 0 }
    }

    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.latency_us.saturating_record(micros(started.elapsed()));
        } else {
            self.failed += 1;
        }
    }

    /// Successful calls, their p50, p99 and max in milliseconds (`–` without any), and failures,
    /// as table cells.
    fn cells(&self) -> String {
        let ms = |quantile| {
            if self.latency_us.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.1}", quantile_ms(&self.latency_us, quantile))
            }
        };
        format!("{} | {} | {} | {} | {}", self.latency_us.len(), ms(0.5), ms(0.99), ms(1.0), self.failed)
    }
}

/// Migrates the tenant's slot once, invalidating and looking up back to back until every key has
/// moved, on connections whose refused calls wait `wait` before each retry.
async fn migrate_once(
    cluster: &Arc<PrivateRedisCluster>,
    tenant: &Arc<Tenant>,
    wait: Duration,
    args: &Args,
) -> anyhow::Result<(Calls, Calls, usize, Duration)> {
    // The invalidator's timeouts by default with one replica to confirm.
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response: Duration::from_millis(1_500),
        overall: Duration::from_secs(3),
        refusal_retry: wait,
    };
    let target = RedisTarget::parse(&cluster.url())?;
    let (mut invalidator, mut reader) = (target.connect(timeouts).await?, target.connect(timeouts).await?);
    let migration = cluster.start_migrating(&tenant.entries[0].0, |others| others[0]);
    let started = Instant::now();
    let (batch, pause) = (args.batch, Duration::from_millis(args.pause_ms));
    let mover = {
        let (cluster, migration) = (cluster.clone(), migration.clone());
        tokio::task::spawn_blocking(move || cluster.move_keys(&migration, batch, pause))
    };
    let invalidations = {
        let tenant = tenant.clone();
        let mover_handle = mover.abort_handle();
        tokio::spawn(async move {
            let mut calls = Calls::new();
            for n in 0.. {
                if mover_handle.is_finished() {
                    break;
                }
                let sent = Instant::now();
                let ok = tenant.invalidate(&mut invalidator, n).await;
                calls.record(sent, ok);
            }
            calls
        })
    };
    let mut lookups = Calls::new();
    for n in (0..).step_by(7) {
        if mover.is_finished() {
            break;
        }
        let sent = Instant::now();
        let ok = tenant.look_up(&mut reader, n).await;
        lookups.record(sent, ok);
    }
    let moved = mover.await?;
    let took = started.elapsed();
    let invalidations = invalidations.await?;
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        cluster.finish_migration(&migration);
        cluster.wait_until_healthy(3);
    })
    .await?;
    Ok((invalidations, lookups, moved, took))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Arc::new(tokio::task::spawn_blocking(PrivateRedisCluster::start).await?);
    let namespace = RedisNamespace::on(&cluster.url());
    let mut setup = RedisTarget::parse(&cluster.url())?.connect(Timeouts::all(Duration::from_secs(5))).await?;
    let tenant = Arc::new(Tenant::cache(&mut setup, namespace.keyspace(), args.entries).await?);

    println!("## Invalidations and lookups while the tenant's slot migrates\n");
    println!(
        "{} risk details cached, keys moved {} per `MIGRATE` {} ms apart; invalidations wait for one \
         replica; times in ms.\n",
        args.entries, args.batch, args.pause_ms
    );
    println!(
        "| refusal retry wait | round | keys moved, s | invalidations answered | p50 | p99 | max | failed | lookups answered | p50 | p99 | max | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for round in 1..=args.rounds {
        for &wait_ms in &args.waits_ms {
            let (invalidations, lookups, moved, took) =
                migrate_once(&cluster, &tenant, Duration::from_millis(wait_ms), &args).await?;
            println!(
                "| {wait_ms} ms | {round} | {moved}, {:.1} | {} | {} |",
                took.as_secs_f64(),
                invalidations.cells(),
                lookups.cells()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    #[test]
    fn no_entries_or_an_empty_batch_is_refused_by_clap() {
        assert!(Args::try_parse_from(["reshard_bench"]).is_ok());
        for bad in ["--entries=0", "--batch=0"] {
            let error =
                Args::try_parse_from(["reshard_bench", bad]).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {error}");
        }
    }
}
