//! Layered configuration: built-in defaults < an optional TOML file < environment variables.
//!
//! The well-known variables `DATABASE_URL`, `DATABASE_REPLICA_URLS`, `REDIS_URL`, `API_ADDR`,
//! `METRICS_ADDR` and `OPENRISK_PROFILE` are read as they are; every other setting can be given as
//! `OPENRISK_<SECTION>__<FIELD>` (for example `OPENRISK_CACHE__TTL_SECS=600`).

mod database;
mod pool;
mod sections;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use self::database::{DatabaseSettings, PostgresLink};
pub use self::pool::{PoolOverrides, PoolSettings, Profile};
pub use self::sections::{CacheSettings, HttpSettings, InvalidatorSettings, LogFormat, LogSettings, WakeMode};
use crate::keys::Keyspace;
use crate::protocol::ReplicaAck;
use crate::redis_connection::{RedisTarget, RedisUrlError};

/// Why the configuration could not be loaded; names the offending key and value. The message
/// holds the whole cause, which is therefore not also its source (a report would say it twice).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Rule(String),
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
        let settings: Settings = figment.extract().map_err(|error| ConfigError::Invalid(Box::new(error)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Where Redis is, from `redis_url` (validated when the settings were loaded).
    pub fn redis_target(&self) -> Result<RedisTarget, RedisUrlError> {
        RedisTarget::parse(&self.redis_url)
    }

    /// The Redis keys of this deployment, under `cache.key_prefix`.
    pub fn keyspace(&self) -> Keyspace {
        Keyspace::new(self.cache.key_prefix.clone())
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
        let max_connections = o.max_connections.unwrap_or(defaults.max_connections);
        PoolSettings {
            max_connections,
            min_idle: o.min_idle.unwrap_or(defaults.min_idle),
            max_lifetime: o.max_lifetime_secs.map(Duration::from_secs).unwrap_or(defaults.max_lifetime),
            idle_timeout: o.idle_timeout_secs.map(Duration::from_secs).unwrap_or(defaults.idle_timeout),
            acquire_timeout: o.acquire_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.acquire_timeout),
            link: self.database.link(),
            statement_timeout: Some(Duration::from_millis(self.http.request_timeout_ms)),
            per_tenant: o.max_per_tenant.unwrap_or_else(|| pool::default_share_per_tenant(max_connections)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures must return figment::Error.
mod tests {
    use super::*;
    use figment::Jail;

    /// The Postgres link of the pool when loaded with `env` set.
    fn link_with(env: &[(&str, &str)]) -> PostgresLink {
        let mut link = None;
        Jail::expect_with(|jail| {
            for (name, value) in env {
                jail.set_env(name, value);
            }
            link = Some(Settings::load(None).expect("loads").pool_settings().link);
            Ok(())
        });
        link.expect("set inside the jail")
    }

    /// The error of loading with `env` set (and `file`, when given, written as openrisk.toml).
    fn load_error(env: &[(&str, &str)], file: Option<&str>) -> String {
        let mut error = String::new();
        Jail::expect_with(|jail| {
            for (name, value) in env {
                jail.set_env(name, value);
            }
            let path = file.map(|text| jail.create_file("openrisk.toml", text).map(|_| Path::new("openrisk.toml")));
            error = Settings::load(path.transpose()?).expect_err("must fail").to_string();
            Ok(())
        });
        error
    }

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
            // The statement timeout is the request timeout, whatever the profile.
            let request_timeout = Some(Duration::from_millis(settings.http.request_timeout_ms));
            let defaults = PoolSettings { statement_timeout: request_timeout, ..Profile::Production.pool_defaults() };
            assert_eq!(settings.pool_settings(), defaults);
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
        let error = load_error(&[("DATABASE_REPLICA_URLS", "mysql://r1")], None);
        assert!(error.contains("replica_urls"), "{error}");
        assert!(Settings::default().database.replica_urls.is_empty(), "without the variable nothing changes");
    }

    #[test]
    fn postgres_dead_peer_settings_come_from_the_environment_and_bound_how_long_a_silent_peer_lasts() {
        let defaults = PostgresLink::default();
        assert_eq!(defaults.detection_bound(), Some(Duration::from_secs(6)), "3 s + 3 x 1 s, and 6 s unacknowledged");
        let link = link_with(&[
            ("OPENRISK_DATABASE__KEEPALIVE_IDLE_SECS", "10"),
            ("OPENRISK_DATABASE__TCP_USER_TIMEOUT_MS", "20000"),
        ]);
        assert_eq!(link.detection_bound(), Some(Duration::from_secs(20)));
        let options = link.server_options();
        assert!(options.contains(&("tcp_keepalives_idle", "10".into())), "{options:?}");
        assert!(options.contains(&("tcp_user_timeout", "20000".into())), "{options:?}");
        let link = link_with(&[("OPENRISK_DATABASE__KEEPALIVES", "false")]);
        assert_eq!(link.detection_bound(), None, "nothing bounds an idle silent peer");
        assert_eq!(link.server_options(), [("tcp_user_timeout", "6000".to_owned())]);
        let link = link_with(&[("OPENRISK_DATABASE__SERVER_SIDE_KEEPALIVES", "false")]);
        assert!(link.server_options().is_empty(), "nothing PgBouncer would refuse");
        assert_eq!(link.detection_bound(), Some(Duration::from_secs(6)), "the client's side still holds");
        let error = load_error(&[("OPENRISK_DATABASE__KEEPALIVE_RETRIES", "0")], None);
        assert!(error.contains("keepalive_retries"), "{error}");
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        /// Environment, file and the words the error must name.
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a [&'a str]);
        let cases: [Case; 18] = [
            (&[("API_ADDR", "not-an-address")], None, &["api_addr"]),
            (&[("OPENRISK_PROFILE", "huge")], None, &["profile", "staging"]),
            (&[("OPENRISK_CACHE__TTL_JITTER_PERCENT", "90")], None, &["ttl_jitter_percent"]),
            (&[("OPENRISK_CACHE__TOKEN_CACHE_SECS", "86400")], None, &["token_cache_secs", "60"]),
            (&[("OPENRISK_CACHE__TTL_SECS", "100000000000")], None, &["ttl_secs", "31536000"]),
            (&[("OPENRISK_INVALIDATOR__POLL_INTERVAL_MS", "4294967296")], None, &["poll_interval_ms", "2147483647"]),
            (&[("OPENRISK_INVALIDATOR__READY_MAX_LAG_MS", "0")], None, &["ready_max_lag_ms"]),
            (&[("OPENRISK_INVALIDATOR__REDIS_TIMEOUT_MS", "0")], None, &["redis_timeout_ms"]),
            (&[("OPENRISK_POOL__IDLE_TIMEOUT_SECS", "0")], None, &["idle_timeout_secs"]),
            (&[("OPENRISK_POOL__MAX_LIFETIME_SECS", "0")], None, &["max_lifetime_secs"]),
            (&[("OPENRISK_POOL__ACQUIRE_TIMEOUT_MS", "0")], None, &["acquire_timeout_ms"]),
            (&[("OPENRISK_CACHE__MAX_ENTRY_BYTES", "0")], None, &["max_entry_bytes", "1024", "cache.enabled"]),
            (&[("OPENRISK_DATABASE__LISTEN_URL", "pgbouncer:6432")], None, &["listen_url", "postgres://"]),
            (&[], Some("[cache]\nttl_seconds = 5\n"), &["ttl_seconds"]),
            (&[("OPENRISK_DATABASE__KEEPALIVE_IDLE_SECS", "40000")], None, &["keepalive_idle_secs", "32767"]),
            (&[("OPENRISK_DATABASE__KEEPALIVE_RETRIES", "200")], None, &["keepalive_retries", "127"]),
            (&[("OPENRISK_DATABASE__TCP_USER_TIMEOUT_MS", "3000000000")], None, &["tcp_user_timeout_ms", "2147483647"]),
            (&[("OPENRISK_HTTP__REQUEST_TIMEOUT_MS", "3000000000")], None, &["request_timeout_ms", "2147483647"]),
        ];
        for (env, file, named) in cases {
            let error = load_error(env, file).to_lowercase();
            assert!(named.iter().all(|word| error.contains(word)), "{env:?} {file:?}: {error}");
        }
    }
}
