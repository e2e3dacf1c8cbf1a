//! Layered configuration: built-in defaults < an optional TOML file < environment variables.
//!
//! The well-known variables `DATABASE_URL`, `DATABASE_REPLICA_URLS`, `REDIS_URL`, `API_ADDR`,
//! `METRICS_ADDR` and `OPENRISK_PROFILE` are read as they are; every other setting can be given as
//! `OPENRISK_<SECTION>__<FIELD>` (for example `OPENRISK_CACHE__TTL_SECS=600`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::protocol::ReplicaAck;
use crate::redis_connection::{RedisTarget, RedisUrlError};

/// Why the configuration could not be loaded; names the offending key and value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Rule(String),
}

/// Deployment profile; picks the database pool defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Dev,
    Staging,
    Production,
}

/// Database pool sizes. Unset fields take the profile's default (the old system's sizes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolOverrides {
    pub max_connections: Option<u32>,
    pub min_idle: Option<u32>,
    pub max_lifetime_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub acquire_timeout_ms: Option<u64>,
}

/// The pool settings actually used, after applying the profile and overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_idle: u32,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    pub acquire_timeout: Duration,
    /// How each pooled connection is opened and notices a silent server.
    pub link: PostgresLink,
}

impl Profile {
    /// The old system's pool sizes for this profile.
    pub fn pool_defaults(self) -> PoolSettings {
        let (max_connections, min_idle, lifetime_mins, idle_mins) = match self {
            Profile::Dev => (10, 2, 10, 2),
            Profile::Staging => (50, 10, 30, 5),
            Profile::Production => (100, 25, 60, 10),
        };
        PoolSettings {
            max_connections,
            min_idle,
            max_lifetime: Duration::from_secs(lifetime_mins * 60),
            idle_timeout: Duration::from_secs(idle_mins * 60),
            acquire_timeout: Duration::from_secs(5),
            link: PostgresLink::default(),
        }
    }
}

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
        }
    }
}

/// Limits the API's HTTP server puts on every client, so slow or idle ones cannot hold
/// connections open indefinitely.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// A connection on which nothing arrives or leaves for this long is closed: an idle
    /// keep-alive connection, or a request whose headers or body stall. Longer than
    /// `request_timeout_ms`, so a slow answer gets its 503 rather than a closed connection.
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
    /// How long one `WAIT` may take before the batch is left in the outbox for a retry.
    pub redis_replicas_ack_timeout_ms: u64,
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
        }
    }
}

/// Streaming read replicas of the primary at `database_url`, which the API reads cache misses
/// and bypassed reads from (never writes, nor anything inside a write transaction).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Replica URLs; `DATABASE_REPLICA_URLS` gives them comma-separated. Empty: every read goes
    /// to the primary.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub replica_urls: Vec<String>,
    /// Replay lag past which a replica is taken out of rotation until it catches up.
    pub replica_max_lag_ms: u64,
    /// How often the API measures each replica's lag (and whether it answers at all).
    pub replica_check_interval_ms: u64,
    /// Longest wait for a new connection (TCP and start-up) to the primary or a replica.
    pub connect_timeout_ms: u64,
    /// Send TCP keepalive probes on idle Postgres connections (client and server side).
    pub keepalives: bool,
    /// Idle time before the first keepalive probe, in seconds.
    pub keepalive_idle_secs: u32,
    /// Time between unanswered keepalive probes, in seconds.
    pub keepalive_interval_secs: u32,
    /// Unanswered probes after which the connection is dropped: an idle peer is given up
    /// `keepalive_idle_secs + keepalive_interval_secs * keepalive_retries` after it went silent.
    pub keepalive_retries: u32,
    /// How long sent data may stay unacknowledged before the connection is dropped (a query or
    /// COMMIT sent into a silent network), in milliseconds; 0 leaves the kernel's default.
    pub tcp_user_timeout_ms: u32,
    /// Ask the server to apply the same keepalives and TCP user timeout to its side of each
    /// session (start-up options). Turn off behind PgBouncer, which refuses unknown start-up
    /// options: set them in postgresql.conf and PgBouncer's own settings instead.
    pub server_side_keepalives: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            replica_urls: Vec::new(),
            replica_max_lag_ms: 1000,
            replica_check_interval_ms: 250,
            connect_timeout_ms: 5000,
            keepalives: true,
            keepalive_idle_secs: 3,
            keepalive_interval_secs: 1,
            keepalive_retries: 3,
            tcp_user_timeout_ms: 6000,
            server_side_keepalives: true,
        }
    }
}

impl DatabaseSettings {
    /// The settings every Postgres connection is opened with.
    pub fn link(&self) -> PostgresLink {
        PostgresLink {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            keepalives: self.keepalives,
            keepalive_idle_secs: self.keepalive_idle_secs,
            keepalive_interval_secs: self.keepalive_interval_secs,
            keepalive_retries: self.keepalive_retries,
            tcp_user_timeout_ms: self.tcp_user_timeout_ms,
            server_side: self.server_side_keepalives,
        }
    }
}

/// How a Postgres connection is opened and how it notices a peer that went silent (packets
/// dropped, no reset or close) on both ends: the client's socket, and the server's side of the
/// session (sent as start-up options, so no server configuration is needed). Without them a
/// silent partition leaves a connection waiting for as long as the kernel retransmits (about 15
/// minutes), and the server keeps an invalidator's claimed outbox rows locked for as long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresLink {
    pub connect_timeout: Duration,
    pub keepalives: bool,
    pub keepalive_idle_secs: u32,
    pub keepalive_interval_secs: u32,
    pub keepalive_retries: u32,
    /// 0: the kernel's default.
    pub tcp_user_timeout_ms: u32,
    /// Whether the server is asked for the same on its side of the session.
    pub server_side: bool,
}

impl Default for PostgresLink {
    fn default() -> Self {
        DatabaseSettings::default().link()
    }
}

impl PostgresLink {
    /// Longest time a silent peer goes unnoticed, whether the connection was idle (keepalives)
    /// or waiting for an acknowledgement (`tcp_user_timeout_ms`); `None` when either is off.
    pub fn detection_bound(&self) -> Option<Duration> {
        let idle = u64::from(self.keepalive_idle_secs)
            + u64::from(self.keepalive_interval_secs) * u64::from(self.keepalive_retries);
        (self.keepalives && self.tcp_user_timeout_ms > 0)
            .then(|| Duration::from_secs(idle).max(Duration::from_millis(self.tcp_user_timeout_ms.into())))
    }

    /// The server-side half, as `(parameter, value)` start-up options for the session (none
    /// when the server is not to be asked).
    pub fn server_options(&self) -> Vec<(&'static str, String)> {
        let mut options = Vec::new();
        if !self.server_side {
            return options;
        }
        if self.keepalives {
            options.push(("tcp_keepalives_idle", self.keepalive_idle_secs.to_string()));
            options.push(("tcp_keepalives_interval", self.keepalive_interval_secs.to_string()));
            options.push(("tcp_keepalives_count", self.keepalive_retries.to_string()));
        }
        if self.tcp_user_timeout_ms > 0 {
            options.push(("tcp_user_timeout", self.tcp_user_timeout_ms.to_string()));
        }
        options
    }
}

/// A list given either as a list (TOML) or as one comma-separated string (an environment
/// variable); blank items are dropped.
fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    let items = match ListOrText::deserialize(deserializer)? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect())
}

/// Everything both processes can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database_url: String,
    pub database: DatabaseSettings,
    pub redis_url: String,
    /// Where the API listens (HTTP API, docs, health).
    pub api_addr: SocketAddr,
    /// Where each process serves /metrics (the invalidator also /healthz and /readyz): give the
    /// API and an invalidator on one host different ones.
    pub metrics_addr: SocketAddr,
    pub profile: Profile,
    pub pool: PoolOverrides,
    pub log: LogSettings,
    pub cache: CacheSettings,
    pub http: HttpSettings,
    pub invalidator: InvalidatorSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/openrisk".into(),
            database: DatabaseSettings::default(),
            redis_url: "redis://127.0.0.1:6379".into(),
            api_addr: "127.0.0.1:8080".parse().expect("valid default address"),
            metrics_addr: "127.0.0.1:9464".parse().expect("valid default address"),
            profile: Profile::Dev,
            pool: PoolOverrides::default(),
            log: LogSettings::default(),
            cache: CacheSettings::default(),
            http: HttpSettings::default(),
            invalidator: InvalidatorSettings::default(),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (when given; it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The provider stack behind [`Settings::load`], exposed so tests can add to it.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(Env::prefixed("OPENRISK_").split("__").ignore(&["profile", "config"]))
            .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL", "API_ADDR", "METRICS_ADDR"]))
            .merge(Env::raw().only(&["OPENRISK_PROFILE"]).map(|_| "profile".into()))
            .merge(Env::raw().only(&["DATABASE_REPLICA_URLS"]).map(|_| "database.replica_urls".into()))
    }

    /// Extracts and validates settings from a provider stack.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rule = |ok: bool, message: &str| if ok { Ok(()) } else { Err(ConfigError::Rule(message.into())) };
        rule(
            self.database_url.starts_with("postgres://") || self.database_url.starts_with("postgresql://"),
            "database_url must be a postgres:// URL",
        )?;
        RedisTarget::parse(&self.redis_url).map_err(|error| ConfigError::Rule(error.to_string()))?;
        rule(
            self.database
                .replica_urls
                .iter()
                .all(|url| url.starts_with("postgres://") || url.starts_with("postgresql://")),
            "database.replica_urls must all be postgres:// URLs",
        )?;
        rule(self.database.replica_max_lag_ms >= 1, "database.replica_max_lag_ms must be at least 1")?;
        rule(self.database.replica_check_interval_ms >= 1, "database.replica_check_interval_ms must be at least 1")?;
        rule(self.database.connect_timeout_ms >= 1, "database.connect_timeout_ms must be at least 1")?;
        let database = &self.database;
        rule(
            !database.keepalives
                || (database.keepalive_idle_secs >= 1
                    && database.keepalive_interval_secs >= 1
                    && database.keepalive_retries >= 1),
            "database.keepalive_idle_secs, keepalive_interval_secs and keepalive_retries must be at least 1",
        )?;
        rule(
            self.invalidator.redis_replicas_ack_timeout_ms >= 1,
            "invalidator.redis_replicas_ack_timeout_ms must be at least 1",
        )?;
        rule(
            !self.cache.key_prefix.is_empty()
                && self.cache.key_prefix.len() <= 64
                && !self.cache.key_prefix.contains(['{', '}', ' ']),
            "cache.key_prefix must be 1-64 characters without braces or spaces",
        )?;
        rule(self.cache.ttl_secs >= 1, "cache.ttl_secs must be at least 1")?;
        rule(self.cache.ttl_jitter_percent <= 50, "cache.ttl_jitter_percent must be at most 50")?;
        rule(self.cache.redis_timeout_ms >= 1, "cache.redis_timeout_ms must be at least 1")?;
        rule(self.http.request_timeout_ms >= 1, "http.request_timeout_ms must be at least 1")?;
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
        rule(self.invalidator.poll_interval_ms >= 1, "invalidator.poll_interval_ms must be at least 1")?;
        let pool = self.pool_settings();
        rule(pool.max_connections >= 1, "pool.max_connections must be at least 1")?;
        rule(pool.min_idle <= pool.max_connections, "pool.min_idle must not exceed pool.max_connections")?;
        Ok(())
    }

    /// Where Redis is, from `redis_url` (validated when the settings were loaded).
    pub fn redis_target(&self) -> Result<RedisTarget, RedisUrlError> {
        RedisTarget::parse(&self.redis_url)
    }

    /// What the invalidator waits for before acknowledging: by default one replica on a
    /// cluster (whose masters have replicas) and none on a single node.
    pub fn replica_ack(&self) -> ReplicaAck {
        let clustered = self.redis_target().is_ok_and(|target| target.is_cluster());
        ReplicaAck {
            replicas: self.invalidator.redis_replicas_ack.unwrap_or(u32::from(clustered)),
            timeout: Duration::from_millis(self.invalidator.redis_replicas_ack_timeout_ms),
        }
    }

    /// The profile's pool defaults with any explicit overrides applied.
    pub fn pool_settings(&self) -> PoolSettings {
        let defaults = self.profile.pool_defaults();
        let o = &self.pool;
        PoolSettings {
            max_connections: o.max_connections.unwrap_or(defaults.max_connections),
            min_idle: o.min_idle.unwrap_or(defaults.min_idle),
            max_lifetime: o.max_lifetime_secs.map(Duration::from_secs).unwrap_or(defaults.max_lifetime),
            idle_timeout: o.idle_timeout_secs.map(Duration::from_secs).unwrap_or(defaults.idle_timeout),
            acquire_timeout: o.acquire_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.acquire_timeout),
            link: self.database.link(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures must return figment::Error.
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_defaults_file_and_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("openrisk.toml", "profile = \"staging\"\n[cache]\nttl_secs = 120\n")?;
            jail.set_env("REDIS_URL", "redis://127.0.0.1:6390");
            jail.set_env("OPENRISK_CACHE__TTL_SECS", "600");
            jail.set_env("OPENRISK_POOL__MAX_CONNECTIONS", "12");
            let settings = Settings::load(Some(Path::new("openrisk.toml"))).expect("loads");
            assert_eq!(settings.redis_url, "redis://127.0.0.1:6390");
            assert_eq!(settings.cache.ttl_secs, 600, "environment beats the file");
            assert_eq!(settings.profile, Profile::Staging, "file beats the defaults");
            let pool = settings.pool_settings();
            assert_eq!(pool.max_connections, 12);
            assert_eq!(pool.min_idle, 10, "staging default");
            assert_eq!(pool.max_lifetime, Duration::from_secs(30 * 60));
            Ok(())
        });
    }

    #[test]
    fn profile_comes_from_openrisk_profile() {
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_PROFILE", "production");
            let settings = Settings::load(None).expect("loads");
            assert_eq!(settings.pool_settings(), Profile::Production.pool_defaults());
            assert_eq!(settings.pool_settings().max_connections, 100);
            Ok(())
        });
    }

    #[test]
    fn replicas_come_comma_separated_from_the_environment_or_as_a_list_from_the_file() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_REPLICA_URLS", "postgres://r1:5432/openrisk, postgres://r2:5432/openrisk,");
            jail.set_env("OPENRISK_DATABASE__REPLICA_MAX_LAG_MS", "250");
            let settings = Settings::load(None).expect("loads");
            assert_eq!(settings.database.replica_urls, ["postgres://r1:5432/openrisk", "postgres://r2:5432/openrisk"]);
            assert_eq!(settings.database.replica_max_lag_ms, 250);
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("openrisk.toml", "[database]\nreplica_urls = [\"postgres://r1/openrisk\"]\n")?;
            let settings = Settings::load(Some(Path::new("openrisk.toml"))).expect("loads");
            assert_eq!(settings.database.replica_urls, ["postgres://r1/openrisk"]);
            assert_eq!(settings.database.replica_max_lag_ms, 1000, "the default");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_REPLICA_URLS", "mysql://r1");
            let error = Settings::load(None).expect_err("must fail").to_string();
            assert!(error.contains("replica_urls"), "{error}");
            Ok(())
        });
        assert!(Settings::default().database.replica_urls.is_empty(), "without the variable nothing changes");
    }

    #[test]
    fn postgres_dead_peer_settings_come_from_the_environment_and_bound_how_long_a_silent_peer_lasts() {
        let defaults = PostgresLink::default();
        assert_eq!(defaults.detection_bound(), Some(Duration::from_secs(6)), "3 s + 3 x 1 s, and 6 s unacknowledged");
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_DATABASE__KEEPALIVE_IDLE_SECS", "10");
            jail.set_env("OPENRISK_DATABASE__TCP_USER_TIMEOUT_MS", "20000");
            let link = Settings::load(None).expect("loads").pool_settings().link;
            assert_eq!(link.detection_bound(), Some(Duration::from_secs(20)));
            let options = link.server_options();
            assert!(options.contains(&("tcp_keepalives_idle", "10".into())), "{options:?}");
            assert!(options.contains(&("tcp_user_timeout", "20000".into())), "{options:?}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_DATABASE__KEEPALIVES", "false");
            let link = Settings::load(None).expect("loads").database.link();
            assert_eq!(link.detection_bound(), None, "nothing bounds an idle silent peer");
            assert_eq!(link.server_options(), [("tcp_user_timeout", "6000".to_owned())]);
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_DATABASE__SERVER_SIDE_KEEPALIVES", "false");
            let link = Settings::load(None).expect("loads").database.link();
            assert!(link.server_options().is_empty(), "nothing PgBouncer would refuse");
            assert_eq!(link.detection_bound(), Some(Duration::from_secs(6)), "the client's side still holds");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_DATABASE__KEEPALIVE_RETRIES", "0");
            let error = Settings::load(None).expect_err("must fail").to_string();
            assert!(error.contains("keepalive_retries"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        Jail::expect_with(|jail| {
            jail.set_env("API_ADDR", "not-an-address");
            let error = Settings::load(None).expect_err("must fail").to_string();
            assert!(error.to_lowercase().contains("api_addr"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_PROFILE", "huge");
            let error = Settings::load(None).expect_err("must fail").to_string();
            assert!(error.to_lowercase().contains("profile") && error.contains("staging"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("OPENRISK_CACHE__TTL_JITTER_PERCENT", "90");
            let error = Settings::load(None).expect_err("must fail").to_string();
            assert!(error.contains("ttl_jitter_percent"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[cache]\nttl_seconds = 5\n")?;
            let error = Settings::load(Some(Path::new("bad.toml"))).expect_err("must fail").to_string();
            assert!(error.contains("ttl_seconds"), "unknown keys are rejected: {error}");
            Ok(())
        });
    }
}
