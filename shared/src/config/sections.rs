//! The sections each process reads on its own: logging, the response cache, the HTTP server and
//! the invalidator.

use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when writing to a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info,openrisk_api=debug`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info".into() }
    }
}

/// How the API caches responses in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Serve reads from Redis at all (false: every read goes to Postgres).
    pub enabled: bool,
    /// Prefix of every Redis key, so several deployments or tests can share one Redis.
    pub key_prefix: String,
    /// Lifetime of a cached response; invalidation, not expiry, keeps it fresh.
    pub ttl_secs: u64,
    /// Random spread added to or taken from the TTL, in percent, so entries do not expire together.
    pub ttl_jitter_percent: u8,
    /// Upper bound for one Redis call from a request; past it the request reads Postgres.
    pub redis_timeout_ms: u64,
    /// Consecutive Redis failures that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker skips Redis before one request probes it again.
    pub breaker_open_ms: u64,
    /// How long a verified bearer token is trusted without asking Postgres (revocation delay).
    pub token_cache_secs: u64,
    /// List entries one tenant may store per route and API process within one TTL; past it the
    /// tenant's lists of that route are read from Postgres until the TTL has passed.
    pub max_entries_per_route: u32,
    /// Largest response body the cache stores, in bytes; a larger one is served from Postgres
    /// every time. Storing an entry holds Redis for every tenant while it is copied (a 10 MB
    /// list page held it 27 ms), so one tenant's huge pages must not be cached.
    pub max_entry_bytes: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key_prefix: "or".into(),
            ttl_secs: 3600,
            ttl_jitter_percent: 10,
            redis_timeout_ms: 250,
            breaker_failure_threshold: 5,
            breaker_open_ms: 2000,
            token_cache_secs: 5,
            max_entries_per_route: 2000,
            max_entry_bytes: 1024 * 1024,
        }
    }
}

/// Limits the API's HTTP server puts on every client, so slow or idle ones cannot hold
/// connections open indefinitely.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// A connection on which nothing arrives or leaves for this long is closed: an idle
    /// keep-alive connection, or a request whose headers or body stall. A request's headers
    /// must also be complete this long after the connection opened or the previous response
    /// ended, however steadily their bytes arrive. Longer than `request_timeout_ms`, so a slow
    /// answer gets its 503 rather than a closed connection.
    pub idle_timeout_ms: u64,
    /// Longest time one request may take from its headers to its response; past it, 503.
    pub request_timeout_ms: u64,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { idle_timeout_ms: 30_000, request_timeout_ms: 20_000, max_connections: 4096 }
    }
}

/// How the invalidator learns of outbox rows (also its `--mode` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WakeMode {
    /// LISTEN for wake-ups when idle, with the poll interval as a safety net.
    #[default]
    Listen,
    /// Only poll (for PgBouncer in transaction mode, which breaks LISTEN).
    Poll,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidatorSettings {
    pub mode: WakeMode,
    /// Outbox rows claimed per batch.
    pub batch_size: u32,
    /// Longest wait between two looks at the outbox when no wake-up arrives.
    pub poll_interval_ms: u64,
    /// How long an idle replica keeps looking at the outbox (every millisecond) before it parks,
    /// so steady writers are picked up without a NOTIFY and a wake-up; 0 parks at once.
    pub linger_ms: u64,
    /// How long a SIGTERM waits for the batch in hand before exiting.
    pub shutdown_timeout_ms: u64,
    /// Outbox age above which /readyz reports the replica as not caught up.
    pub ready_max_lag_ms: u64,
    /// Redis replicas that must confirm an invalidation (`WAIT`) before its outbox rows are
    /// acknowledged; unset: 1 on a cluster, 0 on a single node.
    pub redis_replicas_ack: Option<u32>,
    /// How long a batch waits for replicas to confirm what it applied on one master before it is
    /// left in the outbox for a retry: the batch's calls to that master share it, one `WAIT`
    /// after another on its connection (at least 20 ms each).
    pub redis_replicas_ack_timeout_ms: u64,
    /// How long one Redis reply may take, besides a `WAIT`, before the batch is left in the
    /// outbox for a retry. A master that stops answering holds every tenant's invalidations in
    /// the batch in hand this long, so it bounds the staleness window such a fault opens.
    pub redis_timeout_ms: u64,
}

impl Default for InvalidatorSettings {
    fn default() -> Self {
        Self {
            mode: WakeMode::Listen,
            batch_size: 500,
            poll_interval_ms: 1000,
            linger_ms: 0,
            shutdown_timeout_ms: 10_000,
            ready_max_lag_ms: 5_000,
            redis_replicas_ack: None,
            redis_replicas_ack_timeout_ms: 500,
            redis_timeout_ms: 1_000,
        }
    }
}
