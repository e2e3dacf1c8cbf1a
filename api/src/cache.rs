//! The read-through cache in front of Postgres, built only on `openrisk_shared::protocol` and
//! `openrisk_shared::keys` (the invalidator uses the same scheme).
//!
//! * A GET looks its entry up in one Redis round trip; a hit returns the stored bytes untouched.
//! * A miss reads Postgres and fills through the protocol's version check, so a fill that read the
//!   database before a write was invalidated is refused (guarantee 1). Dependencies discovered
//!   while reading (a risk's assets) join the snapshot and the database is read again until the
//!   tag set is stable.
//! * Concurrent misses on one key in this process share one database read (single-flight).
//! * Every Redis call is bounded by `cache.redis_timeout_ms`; failures open a circuit breaker and
//!   reads go to Postgres uncached until a probe succeeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use openrisk_shared::config::CacheSettings;
use openrisk_shared::protocol::{self, Fill, Lookup, Snapshot};
use openrisk_shared::{Keyspace, Tag};
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::Invalidations;
use crate::error::ApiError;
use crate::metrics::{CacheResult, FillOutcome, Metrics};

/// Version of every response shape; bump it whenever a cached response changes shape, so a
/// deploy never serves entries written by the previous version.
pub const RESPONSE_SCHEMA_VERSION: u32 = 2;

/// Most times a read is repeated because it discovered dependencies its snapshot lacked.
const MAX_DISCOVERY_ROUNDS: usize = 3;

/// Extra lifetime of tag member sets beyond the longest entry TTL.
const MEMBERS_TTL_MARGIN_SECS: u64 = 60;

/// Called on the miss path between the database read and the fill, with the route and the
/// entry key. Tests use it to hold a reader there while a write commits (the stale-fill race).
pub type BeforeFillHook = Arc<dyn Fn(&'static str, &str) -> BoxFuture<'static, ()> + Send + Sync>;

/// A database read producing a response body and the tags it turned out to depend on.
pub type Loader = Arc<dyn Fn() -> BoxFuture<'static, Result<Loaded, ApiError>> + Send + Sync>;

/// What one database read produced.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The serialised response.
    pub body: Vec<u8>,
    /// Tags discovered while reading (beyond those known up front), e.g. `asset:<id>`.
    pub discovered: Vec<Tag>,
}

impl Loaded {
    pub fn new(body: Vec<u8>) -> Self {
        Self { body, discovered: Vec::new() }
    }
}

/// A response body ready to send, with its entity tag and `Cache-Status` header value.
#[derive(Debug, Clone)]
pub struct Served {
    pub body: Vec<u8>,
    pub etag: String,
    pub cache_status: String,
}

/// A cacheable read: what the entry key and the initial tags are built from.
#[derive(Debug, Clone)]
pub struct CacheableRead {
    /// Route template, for metrics.
    pub route: &'static str,
    pub tenant: Uuid,
    /// Resource name in the entry key.
    pub resource: &'static str,
    /// Every parameter that changes the answer, normalised (defaults filled in).
    pub params: Vec<(&'static str, String)>,
    /// Tags known before reading; `all` is added automatically.
    pub tags: Vec<Tag>,
}

/// Strong entity tag of a body.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..16]))
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    header.trim() == "*" || header.split(',').any(|candidate| bare(candidate) == bare(etag))
}

/// Why a Redis call did not produce a result.
#[derive(Debug, thiserror::Error)]
enum RedisFault {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis call timed out")]
    Timeout,
}

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing { since: Instant },
}

/// Stops calling a failing Redis: opens after `threshold` consecutive failures, lets one probe
/// through once `open_for` has passed, and closes on the first success.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    open_for: Duration,
    /// How long a probe may take before another request probes instead.
    probe_timeout: Duration,
    state: Mutex<BreakerState>,
}

impl Breaker {
    fn new(threshold: u32, open_for: Duration, probe_timeout: Duration) -> Self {
        Self { threshold, open_for, probe_timeout, state: Mutex::new(BreakerState::Closed { failures: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a Redis call may be made now; when the open period is over, the caller becomes
    /// the probe.
    fn allow(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::Probing { since } if now.duration_since(since) < self.probe_timeout => false,
            BreakerState::Open { .. } | BreakerState::Probing { .. } => {
                *state = BreakerState::Probing { since: now };
                true
            }
        }
    }

    fn success(&self) {
        *self.lock() = BreakerState::Closed { failures: 0 };
    }

    fn failure(&self) {
        let mut state = self.lock();
        let until = Instant::now() + self.open_for;
        *state = match *state {
            BreakerState::Closed { failures } if failures + 1 < self.threshold => {
                BreakerState::Closed { failures: failures + 1 }
            }
            _ => BreakerState::Open { until },
        };
    }

    fn is_closed(&self) -> bool {
        matches!(*self.lock(), BreakerState::Closed { .. })
    }
}

/// The result of one miss: the body and how the fill went, shared with collapsed waiters.
#[derive(Debug, Clone)]
struct MissResult {
    body: Arc<Vec<u8>>,
    etag: String,
    cache_status: &'static str,
}

type FlightFuture = Shared<BoxFuture<'static, Result<MissResult, ApiError>>>;

struct Flight {
    id: u64,
    /// The write epoch when the flight started; later readers do not join it (read-your-writes).
    epoch: u64,
    future: FlightFuture,
}

/// The cache: Redis connection, key scheme, breaker, single-flight table and metrics.
pub struct Cache {
    settings: CacheSettings,
    keyspace: Keyspace,
    /// None when the cache is disabled.
    redis: Option<ConnectionManager>,
    timeout: Duration,
    breaker: Breaker,
    flights: Mutex<HashMap<String, Flight>>,
    next_flight: AtomicU64,
    /// Bumped after every write this process commits.
    write_epoch: AtomicU64,
    metrics: Arc<Metrics>,
    before_fill: Option<BeforeFillHook>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("enabled", &self.redis.is_some()).field("keyspace", &self.keyspace).finish()
    }
}

impl Cache {
    /// Prepares the cache; connects to Redis lazily (the API starts while Redis is down).
    pub fn new(
        redis_url: &str,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
        before_fill: Option<BeforeFillHook>,
    ) -> Result<Self, redis::RedisError> {
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let redis = if settings.enabled {
            let client = redis::Client::open(redis_url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(settings.breaker_open_ms.max(100)));
            Some(ConnectionManager::new_lazy_with_config(client, config)?)
        } else {
            None
        };
        let breaker = Breaker::new(
            settings.breaker_failure_threshold,
            Duration::from_millis(settings.breaker_open_ms),
            timeout * 4,
        );
        Ok(Self {
            keyspace: Keyspace::new(settings.key_prefix.clone()),
            settings,
            redis,
            timeout,
            breaker,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            write_epoch: AtomicU64::new(0),
            metrics,
            before_fill,
        })
    }

    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether reads currently skip Redis because the breaker is open.
    pub fn breaker_open(&self) -> bool {
        !self.breaker.is_closed()
    }

    /// Runs one Redis call under the timeout, feeding the breaker, the degraded gauge and the
    /// latency histogram.
    async fn call<T>(
        &self,
        operation: &'static str,
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
                self.breaker.success();
                self.metrics.set_degraded(false);
            }
            Err(error) => {
                self.breaker.failure();
                self.metrics.set_degraded(true);
                tracing::warn!(operation, %error, "redis call failed; serving from Postgres");
            }
        }
        result
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.redis.clone()
    }

    /// Serves `read` from Redis when current, otherwise through `load` (once per key and write
    /// epoch in this process), filling the cache when the protocol allows.
    pub async fn read_through(self: &Arc<Self>, read: CacheableRead, load: Loader) -> Result<Served, ApiError> {
        let route = read.route;
        let mut tags = read.tags;
        tags.push(Tag::all());
        tags.sort();
        tags.dedup();
        let Some(mut conn) = self.connection() else {
            self.metrics.cache_request(route, CacheResult::Bypass);
            return uncached(load, "openrisk; fwd=bypass; detail=disabled").await;
        };
        if !self.breaker.allow() {
            self.metrics.cache_request(route, CacheResult::Bypass);
            return uncached(load, "openrisk; fwd=bypass; detail=breaker-open").await;
        }
        let key = self.keyspace.entry_key(read.tenant, RESPONSE_SCHEMA_VERSION, read.resource, &read.params);
        let lookup = self.call("lookup", protocol::lookup(&mut conn, &self.keyspace, read.tenant, &key, &tags)).await;
        match lookup {
            Err(_) => {
                self.metrics.cache_request(route, CacheResult::Error);
                uncached(load, "openrisk; fwd=bypass; detail=redis-error").await
            }
            Ok(Lookup::Hit { body, etag }) => {
                self.metrics.cache_request(route, CacheResult::Hit);
                Ok(Served { body, etag, cache_status: "openrisk; hit".into() })
            }
            Ok(Lookup::Miss { snapshot }) => {
                self.metrics.cache_request(route, CacheResult::Miss);
                self.collapse(route, read.tenant, key, snapshot, load).await
            }
        }
    }

    /// Joins the in-flight miss for `key` when there is one from the current write epoch,
    /// otherwise starts it.
    async fn collapse(
        self: &Arc<Self>,
        route: &'static str,
        tenant: Uuid,
        key: String,
        snapshot: Snapshot,
        load: Loader,
    ) -> Result<Served, ApiError> {
        let epoch = self.write_epoch.load(Ordering::SeqCst);
        let (future, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match flights.get(&key) {
                Some(flight) if flight.epoch == epoch => (flight.future.clone(), false),
                _ => {
                    let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                    let cache = Arc::clone(self);
                    let flight_key = key.clone();
                    // A task of its own: the read completes (and leaves the table) even when the
                    // request that started it goes away.
                    let task = tokio::spawn(async move {
                        let result = cache.miss(route, tenant, &flight_key, snapshot, load).await;
                        let mut flights = cache.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        if flights.get(&flight_key).is_some_and(|flight| flight.id == id) {
                            flights.remove(&flight_key);
                        }
                        result
                    });
                    let future = async move {
                        task.await.unwrap_or_else(|error| {
                            tracing::error!(%error, "cache miss task failed");
                            Err(ApiError::internal())
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, Flight { id, epoch, future: future.clone() });
                    (future, true)
                }
            }
        };
        if !leader {
            self.metrics.singleflight_wait(route);
        }
        let result = future.await?;
        let cache_status = if leader { result.cache_status } else { "openrisk; fwd=miss; collapsed" };
        Ok(Served { body: result.body.as_ref().clone(), etag: result.etag, cache_status: cache_status.into() })
    }

    /// The miss path: read until the dependency set is stable, then fill through the protocol.
    async fn miss(
        &self,
        route: &'static str,
        tenant: Uuid,
        key: &str,
        mut snapshot: Snapshot,
        load: Loader,
    ) -> Result<MissResult, ApiError> {
        let mut conn = self.connection().ok_or_else(ApiError::internal)?;
        let mut rounds = 0;
        let loaded = loop {
            let loaded = load().await?;
            let missing: Vec<Tag> = loaded.discovered.iter().filter(|tag| !snapshot.covers(tag)).cloned().collect();
            if missing.is_empty() {
                break loaded;
            }
            if rounds == MAX_DISCOVERY_ROUNDS {
                tracing::info!(route, "dependencies kept changing while reading; serving without caching");
                return Ok(MissResult::new(loaded.body, "openrisk; fwd=miss; detail=unstable-dependencies"));
            }
            rounds += 1;
            let extended = protocol::extend_snapshot(&mut conn, &self.keyspace, tenant, &mut snapshot, &missing);
            if self.call("snapshot", extended).await.is_err() {
                self.metrics.cache_fill(route, FillOutcome::Error);
                return Ok(MissResult::new(loaded.body, "openrisk; fwd=miss; detail=redis-error"));
            }
        };
        if let Some(hook) = &self.before_fill {
            hook(route, key).await;
        }
        let etag = etag_of(&loaded.body);
        let ttl_secs = self.jittered_ttl();
        let fill = Fill {
            entry_key: key,
            body: &loaded.body,
            etag: &etag,
            ttl_secs,
            members_ttl_secs: self.max_ttl_secs() + MEMBERS_TTL_MARGIN_SECS,
        };
        let filled = self.call("fill", protocol::fill(&mut conn, &self.keyspace, tenant, &snapshot, fill)).await;
        let (outcome, cache_status) = match filled {
            Ok(true) => (FillOutcome::Stored, "openrisk; fwd=miss; stored"),
            Ok(false) => (FillOutcome::Rejected, "openrisk; fwd=miss; detail=fill-rejected"),
            Err(_) => (FillOutcome::Error, "openrisk; fwd=miss; detail=redis-error"),
        };
        self.metrics.cache_fill(route, outcome);
        Ok(MissResult { body: Arc::new(loaded.body), etag, cache_status })
    }

    fn max_ttl_secs(&self) -> u64 {
        self.settings.ttl_secs + self.settings.ttl_secs * u64::from(self.settings.ttl_jitter_percent) / 100
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

    /// Invalidates what a committed write changed, so the writer reads its own write at once.
    /// Best effort: when Redis is unavailable the invalidator applies the same outbox rows.
    pub async fn invalidate(&self, invalidations: &Invalidations) {
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        let Some(mut conn) = self.connection() else { return };
        if invalidations.0.is_empty() || !self.breaker.allow() {
            return;
        }
        for (tenant, tags) in &invalidations.0 {
            let call = protocol::invalidate(&mut conn, &self.keyspace, *tenant, tags);
            if self.call("invalidate", call).await.is_err() {
                return;
            }
        }
    }

    /// Pings Redis within the timeout (for /readyz); does not touch the breaker.
    pub async fn ping(&self) -> bool {
        let Some(mut conn) = self.connection() else { return false };
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)))
    }

    /// Checks Redis' eviction policy and exports the verdict; false when it could not be read.
    pub async fn check_eviction_policy(&self) -> bool {
        let Some(mut conn) = self.connection() else { return false };
        let verdict = tokio::time::timeout(self.timeout * 4, protocol::check_eviction_policy(&mut conn)).await;
        match verdict {
            Ok(Ok(problem)) => {
                self.metrics.set_eviction_policy_ok(problem.is_none());
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not read redis eviction policy");
                self.metrics.set_eviction_policy_ok(false);
                false
            }
            Err(_) => {
                tracing::warn!("timed out reading redis eviction policy");
                self.metrics.set_eviction_policy_ok(false);
                false
            }
        }
    }
}

impl MissResult {
    fn new(body: Vec<u8>, cache_status: &'static str) -> Self {
        let etag = etag_of(&body);
        Self { body: Arc::new(body), etag, cache_status }
    }
}

/// Reads from Postgres without touching Redis.
async fn uncached(load: Loader, cache_status: &str) -> Result<Served, ApiError> {
    let loaded = load().await?;
    let etag = etag_of(&loaded.body);
    Ok(Served { body: loaded.body, etag, cache_status: cache_status.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_once() {
        let breaker = Breaker::new(2, Duration::from_millis(0), Duration::from_secs(60));
        assert!(breaker.allow());
        breaker.failure();
        assert!(breaker.is_closed(), "one failure is below the threshold");
        breaker.failure();
        assert!(!breaker.is_closed());
        assert!(breaker.allow(), "the open period (0 ms) is over: this caller probes");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.success();
        assert!(breaker.is_closed() && breaker.allow());
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = "\"abc\"";
        assert!(if_none_match_matches("\"abc\"", etag));
        assert!(if_none_match_matches("W/\"abc\", \"x\"", etag));
        assert!(if_none_match_matches("*", etag));
        assert!(!if_none_match_matches("\"abd\"", etag));
    }
}
