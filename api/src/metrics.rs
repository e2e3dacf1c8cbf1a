//! The API's Prometheus metrics, on a registry of its own. The names are a contract with the
//! monitoring stack (dashboards and alerts): change them only together.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openrisk_shared::metrics::latency_buckets;
use openrisk_shared::protocol::SettingsProblems;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Metric handles resolved once per label set, so a request pays one map lookup instead of
/// hashing every label value through the metric family on each update.
#[derive(Debug)]
struct Resolved<K, V>(Arc<RwLock<HashMap<K, V>>>);

impl<K, V> Clone for Resolved<K, V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K: Hash + Eq, V: Clone> Resolved<K, V> {
    fn new() -> Self {
        Self(Arc::default())
    }

    /// The handles for `key`, resolving them with `resolve` the first time.
    fn get<Q>(&self, key: &Q, resolve: impl FnOnce() -> (K, V)) -> V
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(found) = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key) {
            return found.clone();
        }
        let (key, value) = resolve();
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(key).or_insert(value).clone()
    }
}

/// The request counter and duration histogram of one route, method and status.
type HttpHandles = (IntCounter, Histogram);

/// How a cached GET was answered, for `openrisk_cache_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CacheResult {
    /// Served from Redis.
    Hit,
    /// Read from Postgres after a lookup found nothing current.
    Miss,
    /// Redis was skipped on purpose (cache disabled or circuit breaker open).
    Bypass,
    /// Redis failed or timed out; read from Postgres without caching.
    Error,
}

impl CacheResult {
    fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
            CacheResult::Error => "error",
        }
    }
}

/// What became of a fill, for `openrisk_cache_fills_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    Stored,
    /// The protocol refused it: a tag was invalidated since the snapshot (the data may be stale).
    Rejected,
    Error,
    /// Not tried: the body is larger than `cache.max_entry_bytes`.
    TooLarge,
}

impl FillOutcome {
    fn label(self) -> &'static str {
        match self {
            FillOutcome::Stored => "stored",
            FillOutcome::Rejected => "rejected",
            FillOutcome::Error => "error",
            FillOutcome::TooLarge => "too_large",
        }
    }
}

/// Every metric the API exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    cache_requests: IntCounterVec,
    cache_fills: IntCounterVec,
    singleflight_waits: IntCounterVec,
    cache_degraded: IntGauge,
    eviction_policy_ok: Gauge,
    persistence_off: Gauge,
    redis_duration: HistogramVec,
    db_duration: HistogramVec,
    db_pool_connections: IntGaugeVec,
    db_pool_max: IntGauge,
    db_reads: IntCounterVec,
    replica_in_rotation: IntGaugeVec,
    replica_lag_seconds: prometheus::GaugeVec,
    replica_lag_bytes: IntGaugeVec,
    replica_behind: IntCounterVec,
    auth_token_cache: IntCounterVec,
    auth_revocations_heard: IntGauge,
    auth_hits: IntCounter,
    auth_misses: IntCounter,
    /// By route template, then method, then status.
    http_by_route: Resolved<String, Resolved<String, Resolved<u16, HttpHandles>>>,
    cache_requests_by_route: Resolved<&'static str, [IntCounter; 4]>,
    redis_by_operation: Resolved<&'static str, Histogram>,
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(latency_buckets()), labels).expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

impl Metrics {
    pub fn new() -> Self {
        let auth_token_cache = counter(
            "openrisk_auth_token_cache_total",
            "Bearer token verifications answered from the in-process cache (hit) or Postgres (miss).",
            &["result"],
        );
        let metrics = Metrics {
            auth_hits: auth_token_cache.with_label_values(&["hit"]),
            auth_misses: auth_token_cache.with_label_values(&["miss"]),
            auth_token_cache,
            http_by_route: Resolved::new(),
            cache_requests_by_route: Resolved::new(),
            redis_by_operation: Resolved::new(),
            registry: Registry::new(),
            http_requests: counter(
                "openrisk_http_requests_total",
                "HTTP requests handled, by route template, method and status code.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "openrisk_http_request_duration_seconds",
                "Time to handle an HTTP request, by route template, method and status code.",
                &["route", "method", "status"],
            ),
            cache_requests: counter(
                "openrisk_cache_requests_total",
                "Cacheable GETs by route and how they were answered (hit, miss, bypass, error).",
                &["route", "result"],
            ),
            cache_fills: counter(
                "openrisk_cache_fills_total",
                "Attempts to store a response in Redis, by route and outcome (stored, rejected, error, too_large: not tried).",
                &["route", "outcome"],
            ),
            singleflight_waits: counter(
                "openrisk_cache_singleflight_waits_total",
                "Cache misses that waited for an identical in-flight database read instead of starting one.",
                &["route"],
            ),
            cache_degraded: IntGauge::new(
                "openrisk_cache_degraded",
                "1 while Redis (on a cluster, some master) is unreachable or a circuit breaker is open (those reads go to Postgres uncached).",
            )
            .expect("valid gauge"),
            auth_revocations_heard: IntGauge::new(
                "openrisk_auth_revocations_heard",
                "1 while this process listens for token revocations (they take effect at once), 0 while \
                 it does not (a revoked token keeps working here up to cache.token_cache_secs).",
            )
            .expect("valid gauge"),
            eviction_policy_ok: Gauge::new(
                "openrisk_cache_eviction_policy_ok",
                "1 when Redis' maxmemory-policy suits the cache protocol, 0 when it does not or is unknown.",
            )
            .expect("valid gauge"),
            persistence_off: Gauge::new(
                "openrisk_cache_redis_persistence_off",
                "1 when Redis keeps no data across restarts (no save schedule, no AOF), as the cache \
                 protocol needs; 0 when it does (a restart would bring invalidated entries back) or is unknown.",
            )
            .expect("valid gauge"),
            redis_duration: histogram(
                "openrisk_redis_command_duration_seconds",
                "Latency of the cache protocol's Redis calls, by operation (lookup, create_versions, replay_floor, stamp_floor, fill, invalidate).",
                &["operation"],
            ),
            db_duration: histogram(
                "openrisk_db_query_duration_seconds",
                "Latency of database queries, by query name.",
                &["query"],
            ),
            db_pool_connections: IntGaugeVec::new(
                Opts::new("openrisk_db_pool_connections", "Database pool connections by state (idle, in_use)."),
                &["state"],
            )
            .expect("valid gauge"),
            db_pool_max: IntGauge::new(
                "openrisk_db_pool_max_connections",
                "Configured size limit of the database pool.",
            )
            .expect("valid gauge"),
            db_reads: counter(
                "openrisk_db_reads_total",
                "Cache misses and bypassed reads by where they were read (replica, primary).",
                &["target"],
            ),
            replica_in_rotation: IntGaugeVec::new(
                Opts::new(
                    "openrisk_db_replica_in_rotation",
                    "1 while a read replica takes reads; 0 while it lags past the limit, is down or is not in recovery.",
                ),
                &["replica"],
            )
            .expect("valid gauge"),
            replica_lag_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "openrisk_db_replica_lag_seconds",
                    "How long ago the primary passed the WAL position a read replica has replayed (0: caught up).",
                ),
                &["replica"],
            )
            .expect("valid gauge"),
            replica_lag_bytes: IntGaugeVec::new(
                Opts::new("openrisk_db_replica_lag_bytes", "WAL bytes a read replica has yet to replay."),
                &["replica"],
            )
            .expect("valid gauge"),
            replica_behind: counter(
                "openrisk_db_replica_behind_floor_total",
                "Reads a replica could not take because it had not replayed the last invalidation of their tags \
                 (read from the primary instead, so the fill holds current rows).",
                &["replica"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_duration.clone()),
            Box::new(metrics.cache_requests.clone()),
            Box::new(metrics.cache_fills.clone()),
            Box::new(metrics.singleflight_waits.clone()),
            Box::new(metrics.cache_degraded.clone()),
            Box::new(metrics.eviction_policy_ok.clone()),
            Box::new(metrics.persistence_off.clone()),
            Box::new(metrics.redis_duration.clone()),
            Box::new(metrics.db_duration.clone()),
            Box::new(metrics.db_pool_connections.clone()),
            Box::new(metrics.db_pool_max.clone()),
            Box::new(metrics.db_reads.clone()),
            Box::new(metrics.replica_in_rotation.clone()),
            Box::new(metrics.replica_lag_seconds.clone()),
            Box::new(metrics.replica_lag_bytes.clone()),
            Box::new(metrics.replica_behind.clone()),
            Box::new(metrics.auth_token_cache.clone()),
            Box::new(metrics.auth_revocations_heard.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let by_method = self.http_by_route.get(route, || (route.to_owned(), Resolved::new()));
        let by_status = by_method.get(method, || (method.to_owned(), Resolved::new()));
        let (requests, duration) = by_status.get(&status, || {
            let status_text = status.to_string();
            let labels = [route, method, status_text.as_str()];
            (status, (self.http_requests.with_label_values(&labels), self.http_duration.with_label_values(&labels)))
        });
        requests.inc();
        duration.observe(elapsed.as_secs_f64());
    }

    pub fn cache_request(&self, route: &'static str, result: CacheResult) {
        let counters = self.cache_requests_by_route.get(route, || {
            let counter = |result: CacheResult| self.cache_requests.with_label_values(&[route, result.label()]);
            let all = [CacheResult::Hit, CacheResult::Miss, CacheResult::Bypass, CacheResult::Error];
            (route, all.map(counter))
        });
        counters[result as usize].inc();
    }

    pub fn cache_fill(&self, route: &str, outcome: FillOutcome) {
        self.cache_fills.with_label_values(&[route, outcome.label()]).inc();
    }

    pub fn singleflight_wait(&self, route: &str) {
        self.singleflight_waits.with_label_values(&[route]).inc();
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.cache_degraded.set(i64::from(degraded));
    }

    pub fn degraded(&self) -> bool {
        self.cache_degraded.get() != 0
    }

    pub fn set_token_revocations_heard(&self, heard: bool) {
        self.auth_revocations_heard.set(i64::from(heard));
    }

    /// Exports what the check of Redis' settings found: `None` when it could not be read.
    pub fn set_server_settings(&self, problems: Option<&SettingsProblems>) {
        let ok = |problem: fn(&SettingsProblems) -> bool| if problems.is_some_and(problem) { 1.0 } else { 0.0 };
        self.eviction_policy_ok.set(ok(|found| found.eviction.is_none()));
        self.persistence_off.set(ok(|found| found.persistence.is_none()));
    }

    pub fn observe_redis(&self, operation: &'static str, started: Instant) {
        let histogram =
            self.redis_by_operation.get(operation, || (operation, self.redis_duration.with_label_values(&[operation])));
        histogram.observe(started.elapsed().as_secs_f64());
    }

    pub fn observe_db(&self, query: &str, started: Instant) {
        self.db_duration.with_label_values(&[query]).observe(started.elapsed().as_secs_f64());
    }

    pub fn set_pool(&self, idle: u32, in_use: u32, max: u32) {
        self.db_pool_connections.with_label_values(&["idle"]).set(i64::from(idle));
        self.db_pool_connections.with_label_values(&["in_use"]).set(i64::from(in_use));
        self.db_pool_max.set(i64::from(max));
    }

    /// Counts a cache miss or bypassed read by where it was read: `replica` or `primary`.
    pub fn db_read(&self, target: &'static str) {
        self.db_reads.with_label_values(&[target]).inc();
    }

    /// Publishes what the replica monitor measured; an unknown lag removes the lag samples.
    pub fn set_replica(&self, replica: &str, in_rotation: bool, lag_seconds: Option<f64>, lag_bytes: Option<u64>) {
        self.replica_in_rotation.with_label_values(&[replica]).set(i64::from(in_rotation));
        match lag_seconds {
            Some(lag) => self.replica_lag_seconds.with_label_values(&[replica]).set(lag),
            None => drop(self.replica_lag_seconds.remove_label_values(&[replica])),
        }
        match lag_bytes {
            Some(lag) => {
                self.replica_lag_bytes.with_label_values(&[replica]).set(i64::try_from(lag).unwrap_or(i64::MAX))
            }
            None => drop(self.replica_lag_bytes.remove_label_values(&[replica])),
        }
    }

    pub fn replica_behind(&self, replica: &str) {
        self.replica_behind.with_label_values(&[replica]).inc();
    }

    pub fn auth_cache(&self, hit: bool) {
        if hit { &self.auth_hits } else { &self.auth_misses }.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
