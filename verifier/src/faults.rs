//! The faults, each injected into the private servers or the spawned processes while the
//! workload runs.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;

use openrisk_test_support::ReplicaPair;

use crate::world::{POLL_INTERVAL_MS, World, configure_redis};

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
    /// `FLUSHALL` while readers fill.
    FlushRedis,
    /// A burst of writes, then SIGKILL of one replica while the other runs; restarted after.
    KillReplicaMidBatch,
    /// SIGSTOP one replica for longer than the poll interval, then SIGCONT.
    PauseReplica,
    /// `CLIENT PAUSE … WRITE|ALL` while readers fill.
    SlowRedis,
    /// `maxmemory` just above the current use with `volatile-lru`: entries get evicted.
    RedisMaxmemory,
    /// Replica mode: replay paused on the read replica for 3 s under load, with a `FLUSHALL`
    /// half-way (versions and replay floors lost while the replica lags), then resumed.
    PauseReplay,
    /// Replica mode: the read replica crashes (SIGQUIT), stays down up to 2 s, and restarts.
    RestartReadReplica,
}

/// The faults of a run against a single Postgres.
pub const ALL: [Fault; 8] = [
    Fault::KillListener,
    Fault::RestartPostgres,
    Fault::RestartRedis,
    Fault::FlushRedis,
    Fault::KillReplicaMidBatch,
    Fault::PauseReplica,
    Fault::SlowRedis,
    Fault::RedisMaxmemory,
];

/// The faults of a replica run (`--replica`): those of a single Postgres except its restart (the
/// primary of a replica pair is not restarted), and the replica's own.
pub fn replica_run() -> Vec<Fault> {
    let single = ALL.into_iter().filter(|fault| *fault != Fault::RestartPostgres);
    single.chain([Fault::PauseReplay, Fault::RestartReadReplica]).collect()
}

/// A replica smoke run: the two replica faults and a flush.
pub const REPLICA_SMOKE: [Fault; 3] = [Fault::PauseReplay, Fault::RestartReadReplica, Fault::FlushRedis];

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
            Fault::PauseReplay => "pause-replica-replay",
            Fault::RestartReadReplica => "restart-read-replica",
        }
    }
}

/// Injects `fault`; returns what was done, for the report.
pub async fn inject(world: &World, fault: Fault, rng: &mut StdRng) -> anyhow::Result<String> {
    match fault {
        Fault::PauseReplay | Fault::RestartReadReplica => replica_fault(world, fault, rng).await,
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
            let redis = world.redis_server.clone();
            let started = Instant::now();
            let down_for = Duration::from_millis(rng.random_range(0..2500));
            tokio::task::spawn_blocking(move || {
                let mut redis = redis.lock().unwrap();
                redis.kill();
                std::thread::sleep(down_for);
                redis.restart();
            })
            .await?;
            configure_redis(&world.redis_url).await?;
            Ok(format!("redis SIGKILLed, down {:.2}s, restarted empty", started.elapsed().as_secs_f64()))
        }
        Fault::FlushRedis => {
            let mut conn = world.redis().await?;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
            Ok("FLUSHALL".into())
        }
        Fault::KillReplicaMidBatch => {
            let index = rng.random_range(0..world.invalidators.len());
            let sql = world.sql().await?;
            let mut replica = world.invalidators[index].lock().await;
            let ports = tcp_ports_of(replica.pid);
            // Pause Redis writes so every replica that claims a batch is stuck applying it,
            // then commit a burst and SIGKILL the chosen replica once it holds claimed rows.
            let mut conn = world.redis().await?;
            let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE").query_async(&mut conn).await?;
            let paused = Instant::now();
            let burst = sql
                .execute(
                    "UPDATE risks SET updated_at = now() WHERE deleted_at IS NULL AND title NOT LIKE 'probe%'",
                    &[],
                )
                .await?;
            let mut claimed = 0i64;
            while claimed == 0 && paused.elapsed() < Duration::from_millis(1300) {
                claimed = sql
                    .query_one(
                        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                         WHERE a.application_name = 'openrisk-invalidator' AND a.client_port = ANY($1)
                           AND l.relation = 'cache_outbox'::regclass AND l.granted",
                        &[&ports],
                    )
                    .await?
                    .get(0);
                if claimed == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let backlog: i64 = sql.query_one("SELECT count(*) FROM cache_outbox", &[]).await?.get(0);
            replica.kill().await;
            let killed_at = Instant::now();
            // The other replica must carry on alone for a while.
            tokio::time::sleep(Duration::from_millis(2000)).await;
            let left: i64 = sql.query_one("SELECT count(*) FROM cache_outbox", &[]).await?.get(0);
            replica.restart().await.context("restart the killed replica")?;
            Ok(format!(
                "burst of {burst} row changes under CLIENT PAUSE WRITE; SIGKILL {} {} ({backlog} events in the outbox); {left} left {:.1}s later; restarted",
                replica.spec.name,
                if claimed > 0 {
                    "while it held a claimed batch (mid-batch)"
                } else {
                    "(it had claimed nothing: not mid-batch)"
                },
                killed_at.elapsed().as_secs_f64()
            ))
        }
        Fault::PauseReplica => {
            let index = rng.random_range(0..world.invalidators.len());
            let pause = Duration::from_millis((POLL_INTERVAL_MS * 4).max(2000));
            let replica = world.invalidators[index].lock().await;
            replica.signal(libc::SIGSTOP);
            tokio::time::sleep(pause).await;
            replica.signal(libc::SIGCONT);
            Ok(format!("SIGSTOP {} for {:.1}s, then SIGCONT", replica.spec.name, pause.as_secs_f64()))
        }
        Fault::SlowRedis => {
            let mode = if rng.random_ratio(1, 2) { "WRITE" } else { "ALL" };
            let millis = 2000u64;
            let mut conn = world.redis().await?;
            let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(millis).arg(mode).query_async(&mut conn).await?;
            tokio::time::sleep(Duration::from_millis(millis + 500)).await;
            Ok(format!("CLIENT PAUSE {millis} {mode}"))
        }
        Fault::RedisMaxmemory => {
            let mut conn = world.redis().await?;
            let used = info_field(&mut conn, "memory", "used_memory").await?;
            let evicted_before = info_field(&mut conn, "stats", "evicted_keys").await?;
            // Half the dataset over the limit: Redis must evict (only keys with a TTL: entries
            // and member sets) to get under it, and keeps evicting while readers fill.
            let dataset = info_field(&mut conn, "memory", "used_memory_dataset").await?;
            let limit = used.saturating_sub(dataset / 2).max(512 * 1024);
            let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(limit).query_async(&mut conn).await?;
            configure_redis(&world.redis_url).await?;
            tokio::time::sleep(Duration::from_secs(4)).await;
            let evicted = info_field(&mut conn, "stats", "evicted_keys").await? - evicted_before;
            let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut conn).await?;
            Ok(format!("maxmemory {limit} bytes (used {used}) with volatile-lru for 4s: {evicted} keys evicted"))
        }
    }
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
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
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

async fn info_field(conn: &mut redis::aio::MultiplexedConnection, section: &str, field: &str) -> anyhow::Result<u64> {
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
