//! The rules loaded settings must keep beyond their types, each failure naming its key.

use super::{ConfigError, Settings};
use crate::redis_connection::RedisTarget;

/// Longest `cache.token_cache_secs`: how long another API process may honour a revoked token.
pub const MAX_TOKEN_CACHE_SECS: u64 = 60;

/// Longest `cache.ttl_secs`: a year. Entries are kept exact by invalidation, not by expiry, so a
/// longer one buys nothing, and the budget and jitter arithmetic stays far from overflow.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Longest `invalidator.poll_interval_ms`: it is also the LISTEN session's `lock_timeout`, which
/// Postgres takes as a 32-bit count of milliseconds.
pub const MAX_POLL_INTERVAL_MS: u64 = i32::MAX as u64;

/// Longest keepalive idle time and interval, in seconds: what Linux takes for `TCP_KEEPIDLE` and
/// `TCP_KEEPINTVL`; a longer one makes every connection to Postgres fail with `EINVAL`.
pub const MAX_KEEPALIVE_SECS: u32 = 32_767;

/// Most keepalive probes: what Linux takes for `TCP_KEEPCNT`.
pub const MAX_KEEPALIVE_RETRIES: u32 = 127;

/// Longest `http.request_timeout_ms` and `database.tcp_user_timeout_ms`: each is also a Postgres
/// setting of the session (`statement_timeout`, `tcp_user_timeout`), a 32-bit count of
/// milliseconds, and a session that cannot take it fails to start.
pub const MAX_SESSION_MS: u64 = i32::MAX as u64;

/// Smallest `cache.max_entry_bytes`: below it hardly a response fits (a risk's detail is about
/// 1.5 KB), and nearly every read would go to Postgres while the cache looked enabled.
pub const MIN_ENTRY_BYTES: u32 = 1024;

/// Whether `url` names a Postgres server (the scheme libpq and tokio-postgres accept).
fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Settings {
    /// Checks the cross-field and range rules; the first broken one is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let rule = |ok: bool, message: &str| if ok { Ok(()) } else { Err(ConfigError::Rule(message.into())) };
        rule(is_postgres_url(&self.database_url), "database_url must be a postgres:// URL")?;
        RedisTarget::parse(&self.redis_url).map_err(|error| ConfigError::Rule(error.to_string()))?;
        rule(
            self.database.replica_urls.iter().all(|url| is_postgres_url(url)),
            "database.replica_urls must all be postgres:// URLs",
        )?;
        rule(
            self.database.listen_url.as_deref().is_none_or(|url| url.is_empty() || is_postgres_url(url)),
            "database.listen_url must be a postgres:// URL (or empty: the API listens through database_url)",
        )?;
        rule(self.database.replica_max_lag_ms >= 1, "database.replica_max_lag_ms must be at least 1")?;
        rule(self.database.replica_check_interval_ms >= 1, "database.replica_check_interval_ms must be at least 1")?;
        rule(self.database.connect_timeout_ms >= 1, "database.connect_timeout_ms must be at least 1")?;
        let database = &self.database;
        rule(
            !database.keepalives
                || ((1..=MAX_KEEPALIVE_SECS).contains(&database.keepalive_idle_secs)
                    && (1..=MAX_KEEPALIVE_SECS).contains(&database.keepalive_interval_secs)
                    && (1..=MAX_KEEPALIVE_RETRIES).contains(&database.keepalive_retries)),
            &format!(
                "database.keepalive_idle_secs and keepalive_interval_secs must be between 1 and \
                 {MAX_KEEPALIVE_SECS}, keepalive_retries between 1 and {MAX_KEEPALIVE_RETRIES}"
            ),
        )?;
        rule(
            u64::from(database.tcp_user_timeout_ms) <= MAX_SESSION_MS,
            &format!("database.tcp_user_timeout_ms must be at most {MAX_SESSION_MS}"),
        )?;
        rule(
            self.invalidator.redis_replicas_ack_timeout_ms >= 1,
            "invalidator.redis_replicas_ack_timeout_ms must be at least 1",
        )?;
        rule(self.invalidator.redis_timeout_ms >= 1, "invalidator.redis_timeout_ms must be at least 1")?;
        rule(
            !self.cache.key_prefix.is_empty()
                && self.cache.key_prefix.len() <= 64
                && !self.cache.key_prefix.contains(['{', '}', ' ']),
            "cache.key_prefix must be 1-64 characters without braces or spaces",
        )?;
        rule(
            (1..=MAX_TTL_SECS).contains(&self.cache.ttl_secs),
            &format!("cache.ttl_secs must be between 1 and {MAX_TTL_SECS} (a year)"),
        )?;
        rule(self.cache.ttl_jitter_percent <= 50, "cache.ttl_jitter_percent must be at most 50")?;
        rule(self.cache.redis_timeout_ms >= 1, "cache.redis_timeout_ms must be at least 1")?;
        rule(
            self.cache.max_entry_bytes >= MIN_ENTRY_BYTES,
            &format!(
                "cache.max_entry_bytes must be at least {MIN_ENTRY_BYTES} (a risk's detail is about \
                 1.5 KB); cache.enabled = false switches the cache off"
            ),
        )?;
        rule(
            self.cache.token_cache_secs <= MAX_TOKEN_CACHE_SECS,
            &format!(
                "cache.token_cache_secs must be at most {MAX_TOKEN_CACHE_SECS}: a revoked token keeps working that long"
            ),
        )?;
        rule(
            (1..=MAX_SESSION_MS).contains(&self.http.request_timeout_ms),
            &format!("http.request_timeout_ms must be between 1 and {MAX_SESSION_MS}"),
        )?;
        rule(
            self.http.idle_timeout_ms > self.http.request_timeout_ms,
            "http.idle_timeout_ms must be longer than http.request_timeout_ms",
        )?;
        rule(self.http.max_connections >= 1, "http.max_connections must be at least 1")?;
        rule(self.cache.breaker_failure_threshold >= 1, "cache.breaker_failure_threshold must be at least 1")?;
        rule(
            (1..=100_000).contains(&self.invalidator.batch_size),
            "invalidator.batch_size must be between 1 and 100000",
        )?;
        rule(
            (1..=MAX_POLL_INTERVAL_MS).contains(&self.invalidator.poll_interval_ms),
            &format!("invalidator.poll_interval_ms must be between 1 and {MAX_POLL_INTERVAL_MS}"),
        )?;
        rule(self.invalidator.ready_max_lag_ms >= 1, "invalidator.ready_max_lag_ms must be at least 1")?;
        let pool = self.pool_settings();
        rule(pool.max_connections >= 1, "pool.max_connections must be at least 1")?;
        // Zero is no way to switch these off: the pool would close and reopen connections in a
        // busy loop, or fail every acquire.
        rule(
            !pool.max_lifetime.is_zero() && !pool.idle_timeout.is_zero(),
            "pool.max_lifetime_secs and pool.idle_timeout_secs must be at least 1",
        )?;
        rule(!pool.acquire_timeout.is_zero(), "pool.acquire_timeout_ms must be at least 1")?;
        rule(pool.min_idle <= pool.max_connections, "pool.min_idle must not exceed pool.max_connections")?;
        rule(
            (1..=pool.max_connections).contains(&pool.per_tenant),
            "pool.max_per_tenant must be between 1 and pool.max_connections",
        )?;
        Ok(())
    }
}
