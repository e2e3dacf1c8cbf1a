//! Replica mode's failovers: the read replica promoted while the primary is stopped, carried out
//! as the operator procedure of `docs/operations.md` (Read replicas, "Promoting a replica"):
//! stop the primary cleanly and make sure the replica replayed its shutdown checkpoint, or, after
//! a primary crashed, flush the cache; promote; re-point and restart every process; then rebuild
//! the old primary as the new replica and give it to the cached API.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openrisk_test_support::{ReplicaPair, with_database};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::check::wait_drained;
use crate::faults::PG_GRACE;
use crate::procs::Proc;
use crate::urls::{ReadUrl, risk_detail};
use crate::world::{World, connect};

/// How long the replica may take to replay the stopped primary's shutdown checkpoint (it
/// received it before the primary exited; replay follows within milliseconds).
const CATCH_UP: Duration = Duration::from_secs(10);

/// Grace for the processes' own shutdown before SIGKILL when they are re-pointed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How the old primary goes down before the promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryStop {
    /// `pg_ctl stop -m fast`: the replica receives every record before the primary exits.
    Clean,
    /// The replica's WAL stream cut (replication refused by the primary, its sender terminated),
    /// 1.5 s of commits, a marker's new title committed and served by the cache, then SIGQUIT:
    /// commits the cache holds are lost with the old primary.
    CrashAhead,
}

/// The whole failover, counted as a Postgres-down window (writes fail until the processes run
/// against the promoted server; reads fail while the cached API restarts).
pub async fn promote_replica(world: &World, stop: PrimaryStop) -> anyhow::Result<String> {
    let pair = world.replica.context("promotion needs a replica run (--replica)")?;
    world.pg_windows.lock().unwrap().push((Instant::now(), None));
    let outcome = fail_over(world, pair, stop).await;
    if let Some(window) = world.pg_windows.lock().unwrap().last_mut() {
        window.1 = Some(Instant::now() + PG_GRACE);
    }
    outcome
}

async fn fail_over(world: &World, pair: &'static ReplicaPair, stop: PrimaryStop) -> anyhow::Result<String> {
    let started = Instant::now();
    let (caught_up, how, marker) = match stop {
        PrimaryStop::Clean => {
            // 1. A clean (fast) shutdown: the WAL senders hand the replica every record up to
            //    the shutdown checkpoint before the primary exits.
            let checkpoint = tokio::task::spawn_blocking(move || pair.stop_primary()).await?;
            // 2. The replica holds every commit of the old primary once it replayed that
            //    checkpoint.
            let replica = connect(&pair.replica_url("openrisk"), "openrisk-verifier").await?;
            let caught_up = replayed_past(&replica, &checkpoint).await?;
            let how = format!(
                "primary stopped cleanly (shutdown checkpoint {checkpoint}); the replica {}",
                if caught_up { "had replayed it" } else { "had NOT replayed it, so the cache was flushed" }
            );
            (caught_up, how, None)
        }
        PrimaryStop::CrashAhead => {
            // 1-2. After a crash nothing tells what the replica missed: the cache is flushed.
            let (lost, marker) = crash_ahead_of_the_replica(world, pair).await?;
            (false, format!("replica cut off, primary crashed {lost}; cache flushed"), Some(marker))
        }
    };
    // 3. Promotion: a new timeline whose positions continue from the replica's last record.
    tokio::task::spawn_blocking(move || pair.promote_replica()).await?;
    // 4. Had the replica missed WAL, entries filled from the old primary could be ahead of the
    //    new one, and floors past its positions: the procedure then empties the cache.
    if !caught_up {
        let mut conn = world.redis().await?;
        let _: Vec<(String, ())> = conn.on_every_master(&redis::cmd("FLUSHALL")).await?;
    }
    // 5. Every process re-pointed at the promoted server, with no replica for now.
    let db_url = with_database(&pair.primary_admin_url(), "openrisk");
    world.set_db_url(db_url.clone());
    let repoint = [("DATABASE_URL", Some(db_url)), ("DATABASE_REPLICA_URLS", None)];
    world.keep_read_routing().await;
    reconfigure_all(&[&world.api, &world.api_ref], &repoint).await?;
    // Before the invalidators run again (no version has changed since the crash), the marker's
    // lost title must not be what the cached API serves. Reported once the procedure is over.
    let lost_commit_failure = match marker {
        Some(marker) => check_lost_commit(world, marker).await?,
        None => None,
    };
    reconfigure_all(&world.invalidators.iter().collect::<Vec<_>>(), &repoint).await?;
    let repointed = started.elapsed();
    // 6. The old primary rejoins as a fresh replica of the new one; the cached API reads it.
    tokio::task::spawn_blocking(move || pair.rebuild_replica()).await?;
    world.keep_read_routing().await;
    world
        .api
        .lock()
        .await
        .reconfigure(&[("DATABASE_REPLICA_URLS", Some(pair.replica_url("openrisk")))], STOP_GRACE)
        .await
        .context("give the cached API the rebuilt replica")?;
    if let Some(failure) = lost_commit_failure {
        bail!("{failure}");
    }
    Ok(format!(
        "{how}; promoted; api, api-ref and both invalidators restarted on it after {:.1}s; old primary rebuilt \
         as its replica and given to api",
        repointed.as_secs_f64()
    ))
}

/// Cuts the replica's WAL stream, lets the workload commit on the primary alone, then holds the
/// writers, commits a new title of a marker risk (no writer touches risks named `probe…`) that the
/// cached API then serves, and crashes the primary. The cache then holds the marker's lost title
/// (and whatever else it filled from lost commits): only the flush keeps it from outliving the
/// promotion. Returns how many WAL bytes the replica never received, and the marker (which keeps
/// the writers held).
async fn crash_ahead_of_the_replica<'w>(
    world: &'w World,
    pair: &'static ReplicaPair,
) -> anyhow::Result<(String, Marker<'w>)> {
    let tenant = world.tenants.first().context("no tenant")?.id;
    let primary = world.sql().await?;
    let marker: Uuid = primary
        .query_one(
            "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, 'probe failover', 1, 1) RETURNING id",
            &[&tenant],
        )
        .await?
        .get(0);
    let read = risk_detail(&world.keyspace, tenant, marker);
    world.known.lock().unwrap().insert(read.key.clone(), read.clone());
    tokio::task::spawn_blocking(move || pair.refuse_replication_on_primary()).await?;
    primary.batch_execute("SELECT pg_reload_conf()").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    primary.batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_replication").await?;
    // The workload commits on the primary alone (all of it lost with the crash).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Writers held from here until the marker is compared, and every event drained, so nothing
    // invalidates the entry that will hold the marker's lost title.
    let writers_held = world.gate.write().await;
    wait_drained(world, Duration::from_secs(10)).await.map_err(anyhow::Error::msg)?;
    primary.execute("UPDATE risks SET title = 'probe failover, lost' WHERE id = $1", &[&marker]).await?;
    wait_drained(world, Duration::from_secs(10)).await.map_err(anyhow::Error::msg)?;
    let cached = cached_until(world, tenant, &read.path, "probe failover, lost").await;
    let end: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    world.primary_crashes.lock().unwrap().push(Instant::now());
    tokio::task::spawn_blocking(move || pair.crash_primary()).await?;
    let replica = connect(&pair.replica_url("openrisk"), "openrisk-verifier").await?;
    let lost: String = replica
        .query_one("SELECT ($1::text::pg_lsn - coalesce(pg_last_wal_receive_lsn(), '0/0'))::text", &[&end])
        .await?
        .get(0);
    let what = format!(
        "{lost} WAL bytes ahead of it, api {} the marker's lost title from the cache",
        if cached { "serving" } else { "NOT serving" }
    );
    Ok((what, Marker { tenant, read, cached, _writers_held: writers_held }))
}

/// The risk whose last title was committed only on the crashed primary; the workload's writers
/// are held while it lives.
struct Marker<'w> {
    tenant: Uuid,
    read: ReadUrl,
    /// Whether the cache served the lost title before the crash (else the check compares nothing).
    cached: bool,
    _writers_held: tokio::sync::RwLockWriteGuard<'w, ()>,
}

/// The failure of the lost-commit check: the marker's body through the cached API when it differs
/// from the reference's (which reads the promoted server), or that the cache never held the lost
/// title, so that comparing them would prove nothing.
async fn check_lost_commit(world: &World, marker: Marker<'_>) -> anyhow::Result<Option<String>> {
    if !marker.cached {
        return Ok(Some(format!(
            "{} never served the marker's lost title from the cache before the crash: the lost-commit check \
             would compare nothing",
            marker.read.path
        )));
    }
    let (status, cached, _) = world.get(&world.api_base, marker.tenant, &marker.read.path).await?;
    let (ref_status, reference, _) = world.get(&world.ref_base, marker.tenant, &marker.read.path).await?;
    Ok(((status, &cached) != (ref_status, &reference)).then(|| {
        format!(
            "after the promotion the cached API served a commit lost with the old primary: {} answered {status} {} \
             through the cache, {ref_status} {} around it",
            marker.read.path,
            String::from_utf8_lossy(&cached),
            String::from_utf8_lossy(&reference)
        )
    }))
}

/// Whether the cached API serves a body containing `title` at `path` from the cache (a hit)
/// within 5 s: only then does the cache hold what the flush must remove.
async fn cached_until(world: &World, tenant: Uuid, path: &str, title: &str) -> bool {
    let needle = format!("\"title\":\"{title}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok((200, body, cache_status)) = world.get(&world.api_base, tenant, path).await
            && cache_status.contains("hit")
            && String::from_utf8_lossy(&body).contains(&needle)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Restarts `procs` side by side with `changes` to their environment.
async fn reconfigure_all(
    procs: &[&tokio::sync::Mutex<Proc>],
    changes: &[(&str, Option<String>)],
) -> anyhow::Result<()> {
    futures::future::try_join_all(procs.iter().map(|proc| async move {
        let mut proc = proc.lock().await;
        proc.reconfigure(changes, STOP_GRACE).await.with_context(|| format!("restart {}", proc.spec.name))
    }))
    .await?;
    Ok(())
}

/// Whether the replica replays past `position` within [`CATCH_UP`].
async fn replayed_past(replica: &Client, position: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let past: bool = replica
            .query_one("SELECT coalesce(pg_last_wal_replay_lsn() > $1::text::pg_lsn, false)", &[&position])
            .await?
            .get(0);
        if past || Instant::now() > deadline {
            return Ok(past);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
