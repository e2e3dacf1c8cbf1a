//! The API's Prometheus metrics, on a registry of its own. The names are a contract with the
//! monitoring stack (dashboards and alerts): change them only together.

use std::time::{Duration, Instant};

use openrisk_shared::metrics::latency_buckets;
use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// How a cached GET was answered, for `openrisk_cache_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl FillOutcome {
    fn label(self) -> &'static str {
        match self {
            FillOutcome::Stored => "stored",
            FillOutcome::Rejected => "rejected",
            FillOutcome::Error => "error",
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
    redis_duration: HistogramVec,
    db_duration: HistogramVec,
    db_pool_connections: IntGaugeVec,
    db_pool_max: IntGauge,
    auth_token_cache: IntCounterVec,
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(latency_buckets()), labels).expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics {
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
                "Attempts to store a response in Redis, by route and outcome (stored, rejected, error).",
                &["route", "outcome"],
            ),
            singleflight_waits: counter(
                "openrisk_cache_singleflight_waits_total",
                "Cache misses that waited for an identical in-flight database read instead of starting one.",
                &["route"],
            ),
            cache_degraded: IntGauge::new(
                "openrisk_cache_degraded",
                "1 while Redis is unreachable or the circuit breaker is open (reads go to Postgres uncached).",
            )
            .expect("valid gauge"),
            eviction_policy_ok: Gauge::new(
                "openrisk_cache_eviction_policy_ok",
                "1 when Redis' maxmemory-policy suits the cache protocol, 0 when it does not or is unknown.",
            )
            .expect("valid gauge"),
            redis_duration: histogram(
                "openrisk_redis_command_duration_seconds",
                "Latency of the cache protocol's Redis calls, by operation (lookup, create_versions, fill, invalidate).",
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
            auth_token_cache: counter(
                "openrisk_auth_token_cache_total",
                "Bearer token verifications answered from the in-process cache (hit) or Postgres (miss).",
                &["result"],
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
            Box::new(metrics.redis_duration.clone()),
            Box::new(metrics.db_duration.clone()),
            Box::new(metrics.db_pool_connections.clone()),
            Box::new(metrics.db_pool_max.clone()),
            Box::new(metrics.auth_token_cache.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration.with_label_values(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn cache_request(&self, route: &str, result: CacheResult) {
        self.cache_requests.with_label_values(&[route, result.label()]).inc();
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

    pub fn set_eviction_policy_ok(&self, ok: bool) {
        self.eviction_policy_ok.set(if ok { 1.0 } else { 0.0 });
    }

    pub fn observe_redis(&self, operation: &str, started: Instant) {
        self.redis_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
    }

    pub fn observe_db(&self, query: &str, started: Instant) {
        self.db_duration.with_label_values(&[query]).observe(started.elapsed().as_secs_f64());
    }

    pub fn set_pool(&self, idle: u32, in_use: u32, max: u32) {
        self.db_pool_connections.with_label_values(&["idle"]).set(i64::from(idle));
        self.db_pool_connections.with_label_values(&["in_use"]).set(i64::from(in_use));
        self.db_pool_max.set(i64::from(max));
    }

    pub fn auth_cache(&self, hit: bool) {
        self.auth_token_cache.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
