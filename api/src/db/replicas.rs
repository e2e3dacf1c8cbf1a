//! Streaming read replicas: where cache misses and bypassed reads are read, and when a replica
//! may answer one.
//!
//! A read is given to a replica only once that replica has replayed the primary's WAL up to the
//! read's *replay floor* (from the cache protocol's floors, or the primary's current position
//! when they are unknown), checked with `pg_last_wal_replay_lsn()` on the very connection, in
//! the very transaction, that then runs the read's queries: each of them takes its snapshot
//! after that check (read committed), so it sees at least that much of the primary. A replica
//! that is behind answers nothing; the primary does. A monitor measures every replica's lag and
//! takes one that lags past `database.replica_max_lag_ms`, is down or is no longer in recovery
//! out of rotation until it is healthy again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openrisk_shared::config::{DatabaseSettings, PoolSettings};
use openrisk_shared::db::Lsn;
use openrisk_shared::tasks::Tasks;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseExecutor, DatabaseTransaction, DbErr, IsolationLevel,
    QueryResult, TransactionTrait,
};

use super::stmt;
use crate::metrics::Metrics;
use crate::tenant_share::TenantShares;

/// How long a read waits for a replica to begin answering before reading the primary instead
/// (the monitor meanwhile takes an unresponsive replica out of rotation).
const REPLICA_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// How far back the monitor remembers the primary's positions, which bounds the lag in seconds
/// it can report.
const POSITION_HISTORY: Duration = Duration::from_secs(600);

/// Where one read's queries run: the primary's pool, or one replica connection inside a
/// read-only transaction opened after its replay position was checked.
#[derive(Debug, Clone)]
pub enum Reader {
    Primary(DatabaseConnection),
    /// A read-only transaction: dropping the last clone ends it (the rollback is queued on its
    /// connection, not awaited), so a replica that goes silent once the read is done cannot hold
    /// the response that read made.
    Replica(Arc<DatabaseTransaction>),
}

impl Reader {
    /// The connection to run the read's queries on.
    pub fn conn(&self) -> DatabaseExecutor<'_> {
        match self {
            Reader::Primary(conn) => DatabaseExecutor::Connection(conn),
            Reader::Replica(transaction) => DatabaseExecutor::Transaction(transaction),
        }
    }
}

/// Why a replica is or is not in rotation, as `/readyz` and the logs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaHealth {
    /// Answering and within the lag limit: reads may go to it.
    InRotation,
    /// Replaying, but further behind the primary than the lag limit.
    Lagging,
    /// Not answering.
    Down,
    /// Answering but no longer a replica (promoted): it no longer follows the primary.
    NotInRecovery,
}

/// What the monitor last measured of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    /// `host:port/database`, as in the metrics.
    pub name: String,
    pub health: ReplicaHealth,
    /// How long ago the primary passed the position the replica has replayed (0: caught up).
    pub lag_seconds: Option<f64>,
    /// WAL bytes the replica has yet to replay.
    pub lag_bytes: Option<u64>,
}

#[derive(Debug)]
struct Replica {
    conn: DatabaseConnection,
    in_rotation: AtomicBool,
    state: Mutex<ReplicaState>,
}

/// The primary and the replicas reads may go to.
#[derive(Debug)]
pub struct ReadRouter {
    primary: DatabaseConnection,
    replicas: Vec<Replica>,
    next: AtomicUsize,
    /// False only in the variant without the replay-floor check, which tests use to show it is needed.
    check_replay_floor: bool,
    max_lag: Duration,
    /// The primary's WAL insert positions as the monitor saw them change, oldest first.
    history: Mutex<VecDeque<(Instant, Lsn)>>,
    /// How many of each tenant's requests may use Postgres at once, reads and writes alike:
    /// taken before a reader is opened, so waiting for a place holds no connection.
    shares: TenantShares,
    metrics: Arc<Metrics>,
}

/// `host:port/database` of a postgres URL, without credentials or parameters.
fn replica_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('?').next().unwrap_or_default().to_owned()
}

/// A text column of a row, `None` when SQL NULL.
fn text_column(row: &QueryResult, column: &str) -> Result<Option<String>, DbErr> {
    row.try_get::<Option<String>>("", column)
}

impl ReadRouter {
    /// Prepares a pool per replica (connected lazily: the API starts while a replica is down)
    /// and starts the monitor, which stops with the router.
    pub async fn start(
        primary: DatabaseConnection,
        settings: &DatabaseSettings,
        pool: PoolSettings,
        check_replay_floor: bool,
        metrics: Arc<Metrics>,
        tasks: &mut Tasks,
    ) -> Result<Arc<Self>, DbErr> {
        let mut replicas = Vec::with_capacity(settings.replica_urls.len());
        for url in &settings.replica_urls {
            let name = replica_name(url);
            metrics.set_replica(&name, false, None, None);
            replicas.push(Replica {
                conn: super::connect_lazy(url, pool).await?,
                in_rotation: AtomicBool::new(false),
                state: Mutex::new(ReplicaState {
                    name,
                    health: ReplicaHealth::Down,
                    lag_seconds: None,
                    lag_bytes: None,
                }),
            });
        }
        let router = Arc::new(Self {
            primary,
            replicas,
            next: AtomicUsize::new(0),
            check_replay_floor,
            max_lag: Duration::from_millis(settings.replica_max_lag_ms),
            history: Mutex::default(),
            shares: TenantShares::new(pool.per_tenant, pool.acquire_timeout),
            metrics,
        });
        if !router.replicas.is_empty() {
            let interval = Duration::from_millis(settings.replica_check_interval_ms);
            tasks.spawn("replica monitor", monitor(Arc::downgrade(&router), interval));
        }
        Ok(router)
    }

    /// The tenants' shares of the pools (see [`TenantShares`]).
    pub fn shares(&self) -> &TenantShares {
        &self.shares
    }

    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// The primary, for a read that must not go to a replica.
    pub fn primary(&self) -> Reader {
        self.metrics.db_read("primary");
        Reader::Primary(self.primary.clone())
    }

    /// The primary's current WAL insert position: past the commit record of every transaction
    /// that has committed, so a replica that has replayed it has every committed write.
    pub async fn primary_position(&self) -> Result<Lsn, DbErr> {
        let row = self
            .primary
            .query_one_raw(stmt("SELECT pg_current_wal_insert_lsn()::text AS position", []))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("pg_current_wal_insert_lsn".into()))?;
        text_column(&row, "position")?
            .and_then(|position| position.parse().ok())
            .ok_or_else(|| DbErr::Custom("pg_current_wal_insert_lsn is not a WAL position".into()))
    }

    /// A reader for a read with no replay floor of its own (the cache was bypassed): a replica
    /// only if it has every write committed before now.
    pub async fn bypass_reader(&self) -> Reader {
        if !self.has_replicas() {
            return self.primary();
        }
        match self.primary_position().await {
            Ok(position) => self.reader_at(position).await,
            Err(_) => self.primary(),
        }
    }

    /// A replica in rotation that has replayed up to `floor`, else the primary.
    pub async fn reader_at(&self, floor: Lsn) -> Reader {
        let count = self.replicas.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let replica = &self.replicas[(first + offset) % count];
            if !replica.in_rotation.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(reader) = self.open(replica, floor).await {
                self.metrics.db_read("replica");
                return reader;
            }
        }
        self.primary()
    }

    /// Begins a transaction on `replica` and keeps it if the replica has replayed up to `floor`.
    async fn open(&self, replica: &Replica, floor: Lsn) -> Option<Reader> {
        let opened = tokio::time::timeout(REPLICA_ANSWER_TIMEOUT, async {
            // Read committed whatever the server's default: each of the read's queries then takes
            // its snapshot after the replay check (under repeatable read the snapshot would be
            // the check's own, which may predate the position it reports).
            let transaction =
                replica.conn.begin_with_config(Some(IsolationLevel::ReadCommitted), Some(AccessMode::ReadOnly)).await?;
            let row = transaction
                .query_one_raw(stmt("SELECT pg_last_wal_replay_lsn()::text AS replayed", []))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("pg_last_wal_replay_lsn".into()))?;
            Ok::<_, DbErr>((
                transaction,
                text_column(&row, "replayed")?.and_then(|replayed| replayed.parse::<Lsn>().ok()),
            ))
        })
        .await;
        let name = || replica.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).name.clone();
        match opened {
            Ok(Ok((transaction, Some(replayed)))) if replayed >= floor || !self.check_replay_floor => {
                Some(Reader::Replica(Arc::new(transaction)))
            }
            Ok(Ok((_, replayed))) => {
                tracing::debug!(replica = name(), ?replayed, %floor, "replica behind the read's replay floor");
                self.metrics.replica_behind(&name());
                None
            }
            Ok(Err(error)) => {
                tracing::debug!(replica = name(), %error, "replica read failed; reading the primary");
                None
            }
            Err(_) => {
                tracing::debug!(replica = name(), "replica did not answer in time; reading the primary");
                None
            }
        }
    }

    /// What the monitor last measured of every replica.
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        self.replicas
            .iter()
            .map(|replica| replica.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
            .collect()
    }

    /// Measures every replica once and updates rotation, metrics and state.
    async fn check(&self) {
        let now = Instant::now();
        let primary =
            tokio::time::timeout(REPLICA_ANSWER_TIMEOUT, self.primary_position()).await.ok().and_then(Result::ok);
        if let Some(position) = primary {
            let mut history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if history.back().is_none_or(|&(_, last)| last < position) {
                history.push_back((now, position));
            }
            while history.len() > 1 && history.front().is_some_and(|&(at, _)| now.duration_since(at) > POSITION_HISTORY)
            {
                history.pop_front();
            }
        }
        for replica in &self.replicas {
            let measured = self.measure(replica, primary, now).await;
            let in_rotation = measured.health == ReplicaHealth::InRotation;
            let was = replica.in_rotation.swap(in_rotation, Ordering::Relaxed);
            if was != in_rotation {
                if in_rotation {
                    tracing::info!(replica = measured.name, "replica back in rotation");
                } else {
                    tracing::warn!(replica = measured.name, health = ?measured.health, lag_seconds = measured.lag_seconds,
                        "replica out of rotation; its reads go to the primary");
                }
            }
            self.metrics.set_replica(&measured.name, in_rotation, measured.lag_seconds, measured.lag_bytes);
            *replica.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = measured;
        }
    }

    async fn measure(&self, replica: &Replica, primary: Option<Lsn>, now: Instant) -> ReplicaState {
        let name = replica.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).name.clone();
        let sql = "SELECT pg_is_in_recovery()::text AS in_recovery, pg_last_wal_replay_lsn()::text AS replayed";
        let answer = tokio::time::timeout(REPLICA_ANSWER_TIMEOUT, replica.conn.query_one_raw(stmt(sql, []))).await;
        let row = match answer {
            Ok(Ok(Some(row))) => row,
            _ => return ReplicaState { name, health: ReplicaHealth::Down, lag_seconds: None, lag_bytes: None },
        };
        let in_recovery = text_column(&row, "in_recovery").ok().flatten().is_some_and(|value| value == "true");
        let replayed = text_column(&row, "replayed").ok().flatten().and_then(|replayed| replayed.parse::<Lsn>().ok());
        let (Some(replayed), true) = (replayed, in_recovery) else {
            return ReplicaState { name, health: ReplicaHealth::NotInRecovery, lag_seconds: None, lag_bytes: None };
        };
        let lag_bytes = primary.map(|primary| primary.bytes_after(replayed));
        let lag = self.lag_behind(replayed, now);
        let health =
            if primary.is_some() && lag <= self.max_lag { ReplicaHealth::InRotation } else { ReplicaHealth::Lagging };
        ReplicaState { name, health, lag_seconds: Some(lag.as_secs_f64()), lag_bytes }
    }

    /// How long ago the primary first went past `replayed` (zero when it has not).
    fn lag_behind(&self, replayed: Lsn, now: Instant) -> Duration {
        let history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        history.iter().find(|&&(_, position)| position > replayed).map_or(Duration::ZERO, |&(at, _)| now - at)
    }
}

/// Checks the replicas every `interval` until the router is dropped.
async fn monitor(router: Weak<ReadRouter>, interval: Duration) {
    loop {
        let Some(router) = router.upgrade() else { return };
        router.check().await;
        drop(router);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_leave_out_credentials_and_parameters() {
        assert_eq!(replica_name("postgres://app:secret@db-2:5432/openrisk?sslmode=require"), "db-2:5432/openrisk");
        assert_eq!(replica_name("postgresql://127.0.0.1:5433/openrisk"), "127.0.0.1:5433/openrisk");
    }
}
