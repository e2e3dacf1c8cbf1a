//! The faults, each injected into the private servers or the spawned processes while the
//! workload runs: [`NODE`] against a single Redis node, [`CLUSTER`] against a Redis Cluster.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use openrisk_shared::redis_connection::RedisConnection;
use openrisk_test_support::{PrivateRedisCluster, ReplicaPair, is_master};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::procs::POLL_INTERVAL_MS;
use crate::promotion::{self, PrimaryStop};
use crate::world::{RedisServers, Topology, World, configure_redis};

/// After Postgres is back, API errors within this grace still count as "Postgres was down"
/// (pools notice dead connections on their next use).
pub const PG_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `pg_terminate_backend` of every invalidator listener connection.
    KillListener,
    /// Postgres crashes (SIGQUIT), stays down up to 2 s, and restarts on the same data.
    RestartPostgres,
    /// Redis is SIGKILLed, stays down up to 2.5 s (the API serves from Postgres), restarts empty.
    RestartRedis,
    /// `FLUSHALL` (on every master) while readers fill.
    FlushRedis,
    /// A burst of writes (Redis writes paused on every master), then SIGKILL of one invalidator
    /// replica while the other runs; restarted after.
    KillReplicaMidBatch,
    /// SIGSTOP one replica for longer than the poll interval, then SIGCONT.
    PauseReplica,
    /// `CLIENT PAUSE … WRITE|ALL` while readers fill.
    SlowRedis,
    /// `maxmemory` just above the current use with `volatile-lru`: entries get evicted.
    RedisMaxmemory,
    /// Cluster: `CLUSTER FAILOVER` sent to the replica of the master serving a tenant's slot.
    ClusterFailover,
    /// Cluster: the master serving a tenant's slot is SIGKILLed, its replica is promoted, then
    /// the killed node restarts empty and rejoins as a replica.
    KillMaster,
    /// Cluster: a tenant's slot is migrated to another master, a few keys at a time
    /// (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`), while readers and writers run.
    MigrateSlot,
    /// Cluster: a Redis replica is SIGKILLed and restarted empty (it resynchronises).
    RestartRedisReplica,
    /// Replica mode: replay paused on the read replica for 3 s under load, with a `FLUSHALL`
    /// half-way (versions and replay floors lost while the replica lags), then resumed.
    PauseReplay,
    /// Replica mode: the read replica crashes (SIGQUIT), stays down up to 2 s, and restarts.
    RestartReadReplica,
    /// Replica mode: the primary stopped cleanly, the replica promoted, every process re-pointed
    /// at it, the old primary rebuilt as the new replica (see `promotion.rs`).
    PromoteReplica,
    /// Replica mode: the same after the primary crashed with commits the replica never received
    /// (the cache is flushed, as the procedure requires after a crash).
    PromoteReplicaAfterCrash,
    /// Network: every packet to and from Redis dropped silently for 10 s (2 s in a smoke run).
    RedisBlackhole,
    /// Network: invalidator-2's address to Postgres cut while it holds a claimed batch.
    PostgresPartitionOneInvalidator,
    /// Network: one LISTEN connection's packets dropped (notifications silently lost).
    HalfOpenListen,
    /// Network: 200 ms more per round trip and 5 % packet loss on the Redis link.
    SlowLossyRedisLink,
}

/// The network faults (`--network`), added to a single node's.
pub const NETWORK: [Fault; 4] =
    [Fault::RedisBlackhole, Fault::PostgresPartitionOneInvalidator, Fault::HalfOpenListen, Fault::SlowLossyRedisLink];

/// The network fault of a smoke run: the short Redis blackhole.
pub const NETWORK_SMOKE: [Fault; 1] = [Fault::RedisBlackhole];

/// The faults of a single Redis node.
pub const NODE: [Fault; 8] = [
    Fault::KillListener,
    Fault::RestartPostgres,
    Fault::RestartRedis,
    Fault::FlushRedis,
    Fault::KillReplicaMidBatch,
    Fault::PauseReplica,
    Fault::SlowRedis,
    Fault::RedisMaxmemory,
];

/// The faults of a Redis Cluster, plus `FLUSHALL` and the invalidator killed mid-batch (both on
/// every master).
pub const CLUSTER: [Fault; 6] = [
    Fault::FlushRedis,
    Fault::KillReplicaMidBatch,
    Fault::ClusterFailover,
    Fault::KillMaster,
    Fault::MigrateSlot,
    Fault::RestartRedisReplica,
];

/// The faults of a replica run (`--replica`, single Redis node): those of a single node except
/// the Postgres restart (the primary of a replica pair is not restarted), and the replica's own.
pub fn replica_run() -> Vec<Fault> {
    let single = NODE.into_iter().filter(|fault| *fault != Fault::RestartPostgres);
    let own = [Fault::PauseReplay, Fault::RestartReadReplica, Fault::PromoteReplica, Fault::PromoteReplicaAfterCrash];
    single.chain(own).collect()
}

/// A replica smoke run: every replica fault once (two of them flush Redis).
pub const REPLICA_SMOKE: [Fault; 4] =
    [Fault::PauseReplay, Fault::RestartReadReplica, Fault::PromoteReplica, Fault::PromoteReplicaAfterCrash];

/// The faults of one round of a run: the topology's, or a replica run's, plus the network
/// faults when the servers sit behind links.
pub fn round(topology: Topology, replica: bool, smoke: bool, network: bool) -> Vec<Fault> {
    let mut faults = match (replica, smoke) {
        (false, _) => of(topology).to_vec(),
        (true, true) => REPLICA_SMOKE.to_vec(),
        (true, false) => replica_run(),
    };
    if network {
        faults.extend(if smoke { &NETWORK_SMOKE[..] } else { &NETWORK[..] });
    }
    faults
}

/// Every fault the topology can be put through.
pub fn of(topology: Topology) -> &'static [Fault] {
    match topology {
        Topology::Node => &NODE,
        Topology::Cluster => &CLUSTER,
    }
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillListener => "kill-listener",
            Fault::RestartPostgres => "restart-postgres",
            Fault::RestartRedis => "restart-redis",
            Fault::FlushRedis => "flushall",
            Fault::KillReplicaMidBatch => "sigkill-replica-mid-batch",
            Fault::PauseReplica => "sigstop-replica",
            Fault::SlowRedis => "slow-redis",
            Fault::RedisMaxmemory => "redis-maxmemory",
            Fault::ClusterFailover => "cluster-failover",
            Fault::KillMaster => "sigkill-redis-master",
            Fault::MigrateSlot => "migrate-tenant-slot",
            Fault::RestartRedisReplica => "restart-redis-replica-empty",
            Fault::PauseReplay => "pause-replica-replay",
            Fault::RestartReadReplica => "restart-read-replica",
            Fault::PromoteReplica => "promote-replica",
            Fault::PromoteReplicaAfterCrash => "promote-replica-after-crash",
            Fault::RedisBlackhole => "redis-blackhole",
            Fault::PostgresPartitionOneInvalidator => "postgres-partition-one-invalidator",
            Fault::HalfOpenListen => "half-open-listen",
            Fault::SlowLossyRedisLink => "slow-lossy-redis-link",
        }
    }
}

/// Injects `fault`; returns what was done, for the report.
pub async fn inject(world: &World, fault: Fault, rng: &mut StdRng) -> anyhow::Result<String> {
    match fault {
        Fault::PauseReplay | Fault::RestartReadReplica => replica_fault(world, fault, rng).await,
        Fault::PromoteReplica => promotion::promote_replica(world, PrimaryStop::Clean).await,
        Fault::PromoteReplicaAfterCrash => promotion::promote_replica(world, PrimaryStop::CrashAhead).await,
        Fault::RedisBlackhole
        | Fault::PostgresPartitionOneInvalidator
        | Fault::HalfOpenListen
        | Fault::SlowLossyRedisLink => crate::network::inject(world, fault).await,
        Fault::KillListener => {
            let sql = world.sql().await?;
            let mut killed = 0i64;
            let deadline = Instant::now() + Duration::from_secs(3);
            while killed == 0 && Instant::now() < deadline {
                killed = sql
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE application_name = 'openrisk-invalidator-listener'",
                        &[],
                    )
                    .await?
                    .get(0);
                if killed == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if killed == 0 {
                bail!("no invalidator LISTEN connection to terminate within 3s");
            }
            Ok(format!("terminated {killed} listener connection(s)"))
        }
        Fault::RestartPostgres => {
            let started = Instant::now();
            let down_for = Duration::from_millis(rng.random_range(0..2000));
            world.pg_windows.lock().unwrap().push((started, None));
            let pg = world.pg.clone().context("no restartable Postgres in a replica run")?;
            tokio::task::spawn_blocking(move || {
                let mut pg = pg.lock().unwrap();
                pg.stop();
                std::thread::sleep(down_for);
                pg.restart();
            })
            .await?;
            let up = Instant::now();
            if let Some(window) = world.pg_windows.lock().unwrap().last_mut() {
                window.1 = Some(up + PG_GRACE);
            }
            Ok(format!("postgres down for {:.2}s", (up - started).as_secs_f64()))
        }
        Fault::RestartRedis => {
            let started = Instant::now();
            let down_for = Duration::from_millis(rng.random_range(0..2500));
            on_servers(world, move |servers| {
                let RedisServers::Node(redis) = servers else { bail!("restart-redis needs a single node") };
                redis.kill();
                std::thread::sleep(down_for);
                redis.restart();
                Ok(())
            })
            .await?;
            configure_redis(&world.redis_url).await?;
            Ok(format!("redis SIGKILLed, down {:.2}s, restarted empty", started.elapsed().as_secs_f64()))
        }
        Fault::FlushRedis => {
            let mut conn = world.redis().await?;
            let _: Vec<(String, ())> = conn.on_every_master(&redis::cmd("FLUSHALL")).await?;
            Ok("FLUSHALL".into())
        }
        Fault::KillReplicaMidBatch => {
            let index = rng.random_range(0..world.invalidators.len());
            let sql = world.sql().await?;
            let mut replica = world.invalidators[index].lock().await;
            // SIGKILL the chosen replica once it holds claimed rows.
            let burst = burst_until_claimed(world, &sql, &tcp_ports_of(replica.pid)).await?;
            let backlog: i64 = sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get(0);
            replica.kill().await;
            let killed_at = Instant::now();
            // The other replica must carry on alone for a while.
            tokio::time::sleep(Duration::from_millis(2000)).await;
            let left: i64 = sql.query_one(openrisk_shared::outbox::BACKLOG, &[]).await?.get(0);
            replica.restart().await.context("restart the killed replica")?;
            Ok(format!(
                "burst of {burst} row changes under CLIENT PAUSE WRITE; SIGKILL {} while it held a claimed batch ({backlog} events in the outbox); {left} left {:.1}s later; restarted",
                replica.spec.name,
                killed_at.elapsed().as_secs_f64()
            ))
        }
        Fault::PauseReplica => {
            let index = rng.random_range(0..world.invalidators.len());
            let pause = Duration::from_millis((POLL_INTERVAL_MS * 4).max(2000));
            let replica = world.invalidators[index].lock().await;
            replica.pause(pause).await?;
            Ok(format!("SIGSTOP {} for {:.1}s, then SIGCONT", replica.spec.name, pause.as_secs_f64()))
        }
        Fault::SlowRedis => {
            let mode = if rng.random_ratio(1, 2) { "WRITE" } else { "ALL" };
            let millis = 2000u64;
            let mut conn = world.redis().await?;
            let _: Vec<(String, ())> =
                conn.on_every_master(redis::cmd("CLIENT").arg("PAUSE").arg(millis).arg(mode)).await?;
            tokio::time::sleep(Duration::from_millis(millis + 500)).await;
            Ok(format!("CLIENT PAUSE {millis} {mode}"))
        }
        Fault::RedisMaxmemory => redis_maxmemory(world).await,
        Fault::ClusterFailover => {
            let tenant = world.tenants.choose(rng).context("no tenant")?.id;
            let key = world.keyspace.tenant_base(tenant);
            let pick: u64 = rng.random();
            // A read of the tenant's list through the cache, so that its slot holds keys to move
            // even right after a flush.
            world.get(&world.api_base, tenant, "/api/v1/risks").await?;
            on_cluster(world, move |cluster| {
                let master = cluster.master_of(&key);
                let replica =
                    *cluster.replicas_of(master).choose(&mut StdRng::seed_from_u64(pick)).context("no replica")?;
                node::<()>(replica, &["CLUSTER", "FAILOVER"])?;
                wait_for(Duration::from_secs(30), "the replica to take over", || {
                    is_master(replica) && !is_master(master)
                })?;
                cluster.wait_until_healthy(CLUSTER_REPLICAS);
                Ok(format!(
                    "CLUSTER FAILOVER on {replica}: master of tenant {tenant}'s slot was {master}, now {replica}"
                ))
            })
            .await
        }
        Fault::KillMaster => {
            let tenant = world.tenants.choose(rng).context("no tenant")?.id;
            let key = world.keyspace.tenant_base(tenant);
            let down_for = Duration::from_millis(rng.random_range(0..1500));
            on_cluster(world, move |cluster| {
                let master = cluster.master_of(&key);
                let replicas = cluster.replicas_of(master);
                let started = Instant::now();
                cluster.kill(master);
                wait_for(Duration::from_secs(30), "a replica to be promoted", || {
                    replicas.iter().any(|&replica| is_master(replica))
                })?;
                let promoted = started.elapsed();
                cluster.wait_until_healthy(CLUSTER_REPLICAS - 1);
                std::thread::sleep(down_for);
                cluster.restart(master);
                // Every replica linked again: the restarted node is one of them.
                cluster.wait_until_healthy(CLUSTER_REPLICAS);
                Ok(format!(
                    "SIGKILL master {master} (tenant {tenant}'s slot): replica promoted after {:.1}s; restarted empty {:.1}s later, rejoined as a replica",
                    promoted.as_secs_f64(),
                    down_for.as_secs_f64()
                ))
            })
            .await
        }
        Fault::MigrateSlot => {
            let tenant = world.tenants.choose(rng).context("no tenant")?.id;
            let key = world.keyspace.tenant_base(tenant);
            let pick: u64 = rng.random();
            on_cluster(world, move |cluster| migrate_slot(cluster, tenant, &key, pick)).await
        }
        Fault::RestartRedisReplica => {
            let pick: u64 = rng.random();
            let down_for = Duration::from_millis(rng.random_range(0..1500));
            on_cluster(world, move |cluster| {
                let replicas: Vec<u16> =
                    cluster.master_ports().into_iter().flat_map(|master| cluster.replicas_of(master)).collect();
                let replica = *replicas.choose(&mut StdRng::seed_from_u64(pick)).context("no replica")?;
                cluster.kill(replica);
                std::thread::sleep(down_for);
                cluster.restart(replica);
                cluster.wait_until_healthy(CLUSTER_REPLICAS);
                Ok(format!(
                    "replica {replica} SIGKILLed, down {:.2}s, restarted empty and resynchronised",
                    down_for.as_secs_f64()
                ))
            })
            .await
        }
    }
}

/// Bursts the replica may sit out (it is between batches, or the other one claimed every row).
const CLAIM_ATTEMPTS: usize = 5;

/// Repeats [`burst`] until the replica whose client ports are `ports` holds claimed outbox rows,
/// at most [`CLAIM_ATTEMPTS`] times; returns the rows changed. Fails when it never claims: the
/// fault would not be mid-batch.
pub async fn burst_until_claimed(world: &World, sql: &tokio_postgres::Client, ports: &[i32]) -> anyhow::Result<u64> {
    ensure!(!ports.is_empty(), "the replica holds no TCP connection to find its Postgres sessions by");
    let mut rows = 0;
    for _ in 0..CLAIM_ATTEMPTS {
        let (burst, claimed) = burst(world, sql, ports).await?;
        rows += burst;
        if claimed {
            return Ok(rows);
        }
    }
    bail!("the replica claimed none of {rows} row changes in {CLAIM_ATTEMPTS} bursts")
}

/// Pauses Redis writes (so every replica that claims a batch is stuck applying it), commits a
/// burst of row changes, and waits up to 1.3 s for the replica whose client ports are `ports` to
/// hold claimed outbox rows. Returns the rows changed and whether it claimed any.
async fn burst(world: &World, sql: &tokio_postgres::Client, ports: &[i32]) -> anyhow::Result<(u64, bool)> {
    let mut conn = world.redis().await?;
    let _: Vec<(String, ())> = conn.on_every_master(redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE")).await?;
    let paused = Instant::now();
    let changed =
        sql.execute("UPDATE risks SET updated_at = now() WHERE deleted_at IS NULL AND title NOT LIKE 'probe%'", &[]);
    let burst = match changed.await {
        Ok(rows) => rows,
        // The workload's change of an asset's criticality rescores its linked risks, locking them
        // in another order: Postgres may end the burst as a deadlock, which changed nothing, and
        // the next attempt writes it again.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {
            return Ok((0, false));
        }
        Err(error) => return Err(error.into()),
    };
    while paused.elapsed() < Duration::from_millis(1300) {
        let claimed: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE a.application_name = 'openrisk-invalidator' AND a.client_port = ANY($1)
                   AND l.relation = 'cache_outbox'::regclass AND l.granted",
                &[&ports],
            )
            .await?
            .get(0);
        if claimed > 0 {
            return Ok((burst, true));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((burst, false))
}

/// The replica pair of a replica run.
fn replica_pair(world: &World) -> anyhow::Result<&'static ReplicaPair> {
    world.replica.context("the fault needs a replica run (--replica)")
}

async fn replica_fault(world: &World, fault: Fault, rng: &mut StdRng) -> anyhow::Result<String> {
    let pair = replica_pair(world)?;
    match fault {
        Fault::PauseReplay => {
            let replica = crate::world::connect(&pair.replica_url("openrisk"), "openrisk-verifier").await?;
            replica.batch_execute("SELECT pg_wal_replay_pause()").await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut conn = world.redis().await?;
            let _: Vec<(String, ())> = conn.on_every_master(&redis::cmd("FLUSHALL")).await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let lag: String = replica
                .query_one("SELECT coalesce(pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn(), 0)::text", &[])
                .await?
                .get(0);
            replica.batch_execute("SELECT pg_wal_replay_resume()").await?;
            Ok(format!("replica replay paused 3s with FLUSHALL half-way; {lag} WAL bytes behind when resumed"))
        }
        Fault::RestartReadReplica => {
            let down_for = Duration::from_millis(rng.random_range(0..2000));
            let started = Instant::now();
            tokio::task::spawn_blocking(move || {
                pair.stop_replica();
                std::thread::sleep(down_for);
                pair.start_replica();
            })
            .await?;
            Ok(format!("read replica down for {:.2}s, restarted", started.elapsed().as_secs_f64()))
        }
        other => anyhow::bail!("{} is not a replica fault", other.name()),
    }
}

/// Replicas of the private cluster (`PrivateRedisCluster::start`: one per master, 3 masters).
const CLUSTER_REPLICAS: usize = 3;

/// Keys moved per `MIGRATE`: few, so readers and writers meet the slot half migrated.
const MIGRATE_BATCH: usize = 5;

/// Moves the slot of `tenant` (whose keys hash by `key`'s tag) from its master to another one, a
/// few keys at a time, then hands the slot over on every master.
fn migrate_slot(cluster: &mut PrivateRedisCluster, tenant: Uuid, key: &str, pick: u64) -> anyhow::Result<String> {
    let choose = |others: &[u16]| *others.choose(&mut StdRng::seed_from_u64(pick)).expect("another master");
    let migration = cluster.start_migrating(key, choose);
    let (source, target, slot) = (migration.source, migration.target, &migration.slot);
    let started = Instant::now();
    let moved = cluster.move_keys(&migration, MIGRATE_BATCH, Duration::from_millis(20));
    cluster.finish_migration(&migration);
    cluster.wait_until_healthy(CLUSTER_REPLICAS);
    // A slot with no key moved tested no read or write against a half-moved slot.
    anyhow::ensure!(moved > 0, "slot {slot} of tenant {tenant} held no key to move");
    Ok(format!(
        "slot {slot} of tenant {tenant} migrated from {source} to {target}: {moved} keys in {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

/// Runs `fault` on the private Redis servers off the async runtime (they are driven by
/// blocking commands). A panic (a server that did not come back in time) becomes an error.
async fn on_servers<T: Send + 'static>(
    world: &World,
    fault: impl FnOnce(&mut RedisServers) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let servers = world.redis_servers.clone();
    tokio::task::spawn_blocking(move || {
        let mut servers = servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fault(&mut servers)
    })
    .await
    .context("the fault panicked")?
}

async fn on_cluster<T: Send + 'static>(
    world: &World,
    fault: impl FnOnce(&mut PrivateRedisCluster) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    on_servers(world, |servers| match servers {
        RedisServers::Cluster(cluster) => fault(cluster),
        RedisServers::Node(_) => bail!("a cluster fault needs --redis cluster"),
    })
    .await
}

/// One command to the cluster node on `port` itself (not routed).
fn node<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> anyhow::Result<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn).with_context(|| format!("{} on node {port}", args.join(" ")))
}

fn wait_for(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("waited {within:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `maxmemory` half the dataset below the current use, with `volatile-lru`, for 4 s under load.
/// The limit is lifted again on every path out (a failure must not leave later faults a Redis
/// that evicts), and the fault fails unless Redis evicted something.
async fn redis_maxmemory(world: &World) -> anyhow::Result<String> {
    let mut conn = world.redis().await?;
    let used = info_field(&mut conn, "memory", "used_memory").await?;
    let evicted_before = info_field(&mut conn, "stats", "evicted_keys").await?;
    // Half the dataset over the limit: Redis must evict (only keys with a TTL: entries and member
    // sets) to get under it, and keeps evicting while readers fill.
    let dataset = info_field(&mut conn, "memory", "used_memory_dataset").await?;
    let limit = used.saturating_sub(dataset / 2).max(512 * 1024);
    let squeezed = squeeze(world, &mut conn, limit).await;
    let lifted = set_maxmemory(world, 0).await.context("lift maxmemory again");
    let evicted = squeezed? - evicted_before;
    lifted?;
    ensure!(evicted > 0, "maxmemory {limit} bytes (used {used}) for 4s evicted no key");
    Ok(format!("maxmemory {limit} bytes (used {used}) with volatile-lru for 4s: {evicted} keys evicted"))
}

/// Sets `maxmemory` to `limit` for 4 s; returns `evicted_keys` at the end.
async fn squeeze(world: &World, conn: &mut RedisConnection, limit: u64) -> anyhow::Result<u64> {
    set_maxmemory(world, limit).await?;
    configure_redis(&world.redis_url).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    info_field(conn, "stats", "evicted_keys").await
}

/// `CONFIG SET maxmemory` on a connection of its own (the fault's may be the one that failed).
async fn set_maxmemory(world: &World, bytes: u64) -> anyhow::Result<()> {
    let mut conn = world.redis().await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(bytes).query_async(&mut conn).await?;
    Ok(())
}

async fn info_field(conn: &mut RedisConnection, section: &str, field: &str) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("INFO {section} has no {field}"))
}

/// Local TCP ports of the sockets process `pid` holds (to find its Postgres backends by
/// `pg_stat_activity.client_port`).
pub fn tcp_ports_of(pid: u32) -> Vec<i32> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')).map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9
                && inodes.iter().any(|inode| inode == fields[9])
                && let Some(port) = fields[1].rsplit(':').next().and_then(|hex| i32::from_str_radix(hex, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}
