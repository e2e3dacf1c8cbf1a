//! `/healthz` and `/readyz`, outside the versioned API (`/metrics` is served on `METRICS_ADDR`).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use openrisk_shared::redis_cluster::ClusterHealth;

use super::ApiTags;
use crate::app::AppState;
use crate::db::replicas::{ReplicaHealth, ReplicaState};

/// Operational endpoints.
pub struct HealthApi;

/// Overall readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ReadyStatus {
    /// Postgres and Redis answer.
    Ready,
    /// Postgres answers, but Redis does not (or the breaker is open: reads are served from
    /// Postgres uncached) or a read replica is out of rotation (its reads go to the primary).
    Degraded,
    /// Postgres does not answer, or lacks migrations this build's queries need (its schema is
    /// older: run `openrisk-api migrate`).
    Unavailable,
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DependencyState {
    Up,
    Down,
    /// Not used (the cache is disabled).
    Disabled,
}

/// Whether a read replica takes reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ReplicaStatus {
    /// Answering and within the lag limit.
    InRotation,
    /// Further behind the primary than `database.replica_max_lag_ms`.
    Lagging,
    /// Not answering.
    Down,
    /// No longer replaying the primary's WAL (promoted): it needs the operator.
    NotInRecovery,
}

/// One read replica as the API last measured it (every `database.replica_check_interval_ms`).
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ReplicaReadiness {
    /// `host:port/database`.
    pub name: String,
    pub status: ReplicaStatus,
    /// How long ago the primary passed the position the replica has replayed; absent when unknown.
    pub lag_seconds: Option<f64>,
    /// WAL bytes the replica has yet to replay; absent when unknown.
    pub lag_bytes: Option<i64>,
}

/// The database's migrations against this build's.
#[derive(Debug, Clone, Copy, Object)]
pub struct SchemaState {
    /// The last migration the database has applied.
    pub applied: i64,
    /// The last migration this build knows (`openrisk-api migrate` applies it).
    pub expected: i64,
}

/// What /readyz found.
#[derive(Debug, Clone, Object)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub postgres: DependencyState,
    /// The last migration the database has applied, and the last this build knows: below it,
    /// the build's queries may use what is not there yet, so the instance is not ready. Absent
    /// when Postgres does not answer.
    #[oai(skip_serializing_if_is_none)]
    pub schema: Option<SchemaState>,
    pub redis: DependencyState,
    /// Whether the circuit breaker currently keeps requests away from Redis.
    pub cache_breaker_open: bool,
    /// The configured read replicas (empty without `DATABASE_REPLICA_URLS`).
    pub replicas: Vec<ReplicaReadiness>,
    /// The Redis Cluster as last polled; absent on a single Redis node.
    #[oai(skip_serializing_if_is_none)]
    pub redis_cluster: Option<RedisClusterState>,
}

impl From<ReplicaState> for ReplicaReadiness {
    fn from(state: ReplicaState) -> Self {
        let status = match state.health {
            ReplicaHealth::InRotation => ReplicaStatus::InRotation,
            ReplicaHealth::Lagging => ReplicaStatus::Lagging,
            ReplicaHealth::Down => ReplicaStatus::Down,
            ReplicaHealth::NotInRecovery => ReplicaStatus::NotInRecovery,
        };
        let lag_bytes = state.lag_bytes.map(saturating_i64);
        Self { name: state.name, status, lag_seconds: state.lag_seconds, lag_bytes }
    }
}

/// A Redis Cluster's health as this process last saw it (polled every 2 s).
#[derive(Debug, Clone, Object)]
pub struct RedisClusterState {
    /// Nodes known to every master.
    pub known_nodes: u32,
    /// Slots (of 16384) served by a healthy master.
    pub slots_ok: u32,
    /// Whether every master reports `cluster_state:ok`.
    pub state_ok: bool,
    /// Masters seen replaced by one of their replicas since this process started.
    pub failovers_seen: i64,
    /// Slots seen moving to another master (resharding) since this process started.
    pub slots_moved_seen: i64,
}

impl From<ClusterHealth> for RedisClusterState {
    fn from(health: ClusterHealth) -> Self {
        let ClusterHealth { known_nodes, slots_ok, state_ok, failovers_seen, slots_moved_seen } = health;
        let (failovers_seen, slots_moved_seen) = (saturating_i64(failovers_seen), saturating_i64(slots_moved_seen));
        Self { known_nodes, slots_ok, state_ok, failovers_seen, slots_moved_seen }
    }
}

/// A count as the published document's `int64` (`uint64` is no standard format, and Java
/// generators read it as a 32-bit `Integer`).
fn saturating_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Liveness.
#[derive(Debug, Clone, Object)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// Liveness answer.
#[derive(ApiResponse)]
enum AliveResponse {
    /// The process is running.
    #[oai(status = 200)]
    Alive(Json<Liveness>),
}

/// Readiness answer.
#[derive(ApiResponse)]
enum ReadyResponse {
    /// Ready to serve (possibly degraded: without the cache).
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: Postgres does not answer.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness
    ///
    /// Answers while the process runs; checks nothing else.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> AliveResponse {
        AliveResponse::Alive(Json(Liveness { status: "ok".into() }))
    }

    /// Readiness
    ///
    /// 200 when Postgres answers (`degraded` when Redis does not, or a Redis Cluster reports a
    /// failed state: reads then bypass the cache where they must; or when a read replica is out
    /// of rotation, so its reads go to the primary), 503 when Postgres does not, or has not
    /// applied every migration this build knows (`schema`).
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let checked = state.readiness.check().await;
        let expected = openrisk_migrations::MIGRATIONS.last().map_or(0, |migration| migration.version);
        let schema = checked.schema_version.map(|applied| SchemaState { applied, expected });
        let postgres = checked.postgres && schema.is_some_and(|schema| schema.applied >= schema.expected);
        let redis = match checked.redis {
            _ if !state.cache.enabled() => DependencyState::Disabled,
            true => DependencyState::Up,
            false => DependencyState::Down,
        };
        let breaker_open = state.cache.breaker_open();
        let replicas: Vec<ReplicaReadiness> = state.reads.replica_states().into_iter().map(Into::into).collect();
        let replica_out = replicas.iter().any(|replica| replica.status != ReplicaStatus::InRotation);
        let redis_cluster = state.cluster.latest().map(RedisClusterState::from);
        let cluster_degraded = redis_cluster.as_ref().is_some_and(|cluster| !cluster.state_ok);
        let status = match (postgres, redis) {
            (false, _) => ReadyStatus::Unavailable,
            (true, DependencyState::Down) => ReadyStatus::Degraded,
            (true, _) if breaker_open || cluster_degraded || replica_out => ReadyStatus::Degraded,
            (true, _) => ReadyStatus::Ready,
        };
        let readiness = Readiness {
            status,
            postgres: if checked.postgres { DependencyState::Up } else { DependencyState::Down },
            schema,
            redis,
            cache_breaker_open: breaker_open,
            redis_cluster,
            replicas,
        };
        if postgres { ReadyResponse::Ready(Json(readiness)) } else { ReadyResponse::NotReady(Json(readiness)) }
    }
}
