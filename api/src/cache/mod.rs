//! The read-through cache in front of Postgres, built only on `openrisk_shared::protocol` and
//! `openrisk_shared::keys` (the invalidator uses the same scheme).
//!
//! * A GET looks its entry up in one `MGET`; a hit sends the stored bytes untouched
//!   (module `read_through`).
//! * A miss reads Postgres and fills through the protocol's version check, so a fill that read
//!   the database before a write was invalidated is refused.
//! * Concurrent misses on one key in this process share one database read (module `single_flight`).
//! * Every Redis call is bounded by `cache.redis_timeout_ms`; failures open a circuit breaker
//!   (module `breaker`) and reads go to Postgres uncached until a probe succeeds.

mod breaker;
mod read_through;
mod single_flight;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use openrisk_shared::config::CacheSettings;
use openrisk_shared::protocol::{self, BackgroundReclaims, Reclaimable, Snapshot};
use openrisk_shared::redis_cluster::ClusterWatch;
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use openrisk_shared::{CacheStatus, Keyspace, Tag};
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use self::breaker::{Breaker, Breakers};
use self::read_through::MissResult;
pub(crate) use self::read_through::uncached as read_uncached;
pub use self::read_through::{Lookup, PriorLookup};
use self::single_flight::SingleFlight;
use crate::db::Invalidations;
use crate::db::replicas::Reader;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Version of every response shape; bump it whenever a cached response changes shape, so a
/// deploy never serves entries written by the previous version. (The protocol's entry format is
/// versioned separately, in the key scheme.)
pub const RESPONSE_SCHEMA_VERSION: u32 = 2;

/// Extra lifetime of tag versions and member sets beyond the longest entry TTL.
const DEPENDENCIES_TTL_MARGIN_SECS: u64 = 60;

/// Called at the [`MissStep`]s of the miss path, with the route and the entry key. Tests use it to
/// hold a reader there while a write commits (the stale-fill race, a shared first read).
pub type MissHook = Arc<dyn Fn(MissStep, &'static str, &str) -> BoxFuture<'static, ()> + Send + Sync>;

/// Where on the miss path a [`MissHook`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissStep {
    /// After the read that shows whether a row exists, before its version is created (a miss
    /// whose lookup found a row's version absent).
    FirstRead,
    /// Between the database read and the fill.
    Fill,
}

/// A database read producing a serialised response body, run on the reader it is given.
pub type Loader = Arc<dyn Fn(Reader) -> BoxFuture<'static, Result<Vec<u8>, ApiError>> + Send + Sync>;

/// A response body ready to send, with its entity tag and how the cache answered.
#[derive(Debug, Clone)]
pub struct Served {
    pub body: Bytes,
    pub etag: String,
    pub cache_status: CacheStatus,
}

/// A cacheable read: what the entry key and the tags are built from.
#[derive(Debug, Clone)]
pub struct CacheableRead {
    /// Route template, for metrics.
    pub route: &'static str,
    pub tenant: Uuid,
    /// Resource name in the entry key.
    pub resource: &'static str,
    /// Every parameter that changes the answer, normalised (defaults filled in).
    pub params: Vec<(&'static str, String)>,
    /// Every tag the response depends on; `all` is added automatically.
    pub tags: Vec<Tag>,
}

/// Strong entity tag of a body.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..16]))
}

/// Why a Redis call did not produce a result.
#[derive(Debug, thiserror::Error)]
enum RedisFault {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis call timed out")]
    Timeout,
}

/// The cache: Redis connection, key scheme, breaker, single-flight table and metrics.
pub struct Cache {
    settings: CacheSettings,
    keyspace: Keyspace,
    /// None when the cache is disabled.
    redis: Option<RedisConnection>,
    timeout: Duration,
    breakers: Breakers,
    flights: SingleFlight<MissResult, Snapshot>,
    reclaims: BackgroundReclaims,
    metrics: Arc<Metrics>,
    miss_hook: Option<MissHook>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("enabled", &self.redis.is_some()).field("keyspace", &self.keyspace).finish()
    }
}

impl Cache {
    /// Prepares the cache; connects to Redis lazily (the API starts while Redis is down). A
    /// miss's read is given up after `longest_miss` (the request timeout: no caller waits longer).
    /// On a cluster, `topology` tells which master's breaker a tenant's calls go through.
    pub fn new(
        redis: &RedisTarget,
        settings: CacheSettings,
        longest_miss: Duration,
        metrics: Arc<Metrics>,
        miss_hook: Option<MissHook>,
        topology: ClusterWatch,
    ) -> Result<Self, redis::RedisError> {
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let redis = if settings.enabled {
            let max_reconnect_delay = Duration::from_millis(settings.breaker_open_ms.max(100));
            Some(redis.connect_lazily(Timeouts::all(timeout), max_reconnect_delay)?)
        } else {
            None
        };
        let breakers = Breakers::new(
            settings.breaker_failure_threshold,
            Duration::from_millis(settings.breaker_open_ms),
            timeout * 4,
            topology,
        );
        Ok(Self {
            keyspace: Keyspace::new(settings.key_prefix.clone()),
            settings,
            redis,
            timeout,
            breakers,
            flights: SingleFlight::new(longest_miss),
            reclaims: BackgroundReclaims::default(),
            metrics,
            miss_hook,
        })
    }

    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Brings `openrisk_cache_degraded` down once no breaker is open any more: after a call that
    /// succeeded, and at each scrape, since a breaker can close without a call (see
    /// `Breakers::all_closed`). Checks the breakers again after clearing the gauge: a call that
    /// failed and opened a breaker after the first check may have set it in between.
    pub fn refresh_degraded(&self) {
        if self.metrics.degraded() && self.breakers.all_closed() {
            self.metrics.set_degraded(false);
            if !self.breakers.all_closed() {
                self.metrics.set_degraded(true);
            }
        }
    }

    /// Whether some reads currently skip Redis because a breaker is open (on a cluster, the
    /// breaker of one master is enough).
    pub fn breaker_open(&self) -> bool {
        !self.breakers.all_closed()
    }

    /// Runs one Redis call under the timeout, feeding `breaker` (that of the tenant's master),
    /// the degraded gauge and the latency histogram.
    async fn call<T>(
        &self,
        operation: &'static str,
        breaker: &Breaker,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisFault> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RedisFault::Redis(error)),
            Err(_) => Err(RedisFault::Timeout),
        };
        self.metrics.observe_redis(operation, started);
        match &result {
            Ok(_) => {
                breaker.success();
                // On a cluster another master's breaker may still be open.
                self.refresh_degraded();
            }
            // The master answered and serves its other tenants: only this tenant's slot is on
            // the move, so the call fails without counting against the master's breaker.
            Err(RedisFault::Redis(error)) if protocol::refused_while_migrating(error) => {
                breaker.success();
                self.refresh_degraded();
                tracing::debug!(operation, %error, "redis refused a call while the slot migrates; serving from Postgres");
            }
            Err(error) => {
                breaker.failure();
                self.metrics.set_degraded(true);
                tracing::warn!(operation, %error, "redis call failed; serving from Postgres");
            }
        }
        result
    }

    fn connection(&self) -> Option<RedisConnection> {
        self.redis.clone()
    }

    /// The connection the cluster watch polls with; `None` when the cache is disabled or Redis
    /// is a single node.
    pub fn cluster_connection(&self) -> Option<RedisConnection> {
        self.redis.clone().filter(RedisConnection::is_cluster)
    }

    /// Lifetime of tag versions and member sets: longer than any entry's.
    fn dependencies_ttl_secs(&self) -> u64 {
        let longest =
            self.settings.ttl_secs + self.settings.ttl_secs * u64::from(self.settings.ttl_jitter_percent) / 100;
        longest + DEPENDENCIES_TTL_MARGIN_SECS
    }

    /// The configured TTL, moved by up to ±`ttl_jitter_percent` so entries do not expire together.
    fn jittered_ttl(&self) -> u64 {
        let spread = self.settings.ttl_secs * u64::from(self.settings.ttl_jitter_percent) / 100;
        if spread == 0 {
            return self.settings.ttl_secs;
        }
        let low = self.settings.ttl_secs - spread.min(self.settings.ttl_secs - 1);
        rand::rng().random_range(low..=self.settings.ttl_secs + spread)
    }

    /// Invalidates what a committed write changed, so the writer reads its own write at once;
    /// the entries' memory is reclaimed in the background. Best effort: when Redis is
    /// unavailable the invalidator applies the same outbox rows.
    pub async fn invalidate(self: &Arc<Self>, invalidations: &Invalidations) {
        self.flights.write_committed();
        let Some(mut conn) = self.connection() else { return };
        let mut reclaimable = Reclaimable::default();
        for (tenant, tags) in &invalidations.0 {
            let breaker = self.breakers.of(*tenant);
            if !breaker.allow() {
                continue;
            }
            let call = protocol::invalidate(&mut conn, &self.keyspace, *tenant, tags);
            if let Ok(moved) = self.call("invalidate", &breaker, call).await {
                reclaimable.extend(moved);
            }
        }
        self.reclaims.start(conn, reclaimable, |outcome| {
            if let Err(error) = outcome {
                tracing::debug!(%error, "reclaiming invalidated entries stopped; the rest expires");
            }
        });
    }

    /// Pings Redis (every master of a cluster) within the timeout, for /readyz; does not
    /// touch the breaker.
    pub async fn ping(&self) -> bool {
        let Some(mut conn) = self.connection() else { return false };
        let command = redis::cmd("PING");
        let ping = conn.on_every_master::<String>(&command);
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)))
    }

    /// Checks Redis' eviction and persistence settings and exports the verdict; false when they
    /// could not be read.
    pub async fn check_server_settings(&self) -> bool {
        let Some(mut conn) = self.connection() else { return false };
        let verdict = tokio::time::timeout(self.timeout * 4, protocol::check_server_settings(&mut conn)).await;
        let problems = match verdict {
            Ok(Ok(problems)) => problems,
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not read redis settings");
                self.metrics.set_server_settings(None);
                return false;
            }
            Err(_) => {
                tracing::warn!("timed out reading redis settings");
                self.metrics.set_server_settings(None);
                return false;
            }
        };
        self.metrics.set_server_settings(Some(&problems));
        true
    }
}
