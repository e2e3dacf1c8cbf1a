//! Deployment profiles and the database pool sizes they default to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PostgresLink;

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
    /// Requests of one tenant that may use Postgres at once (three quarters of
    /// `max_connections` when unset).
    pub max_per_tenant: Option<u32>,
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
    /// The server's `statement_timeout` for each session, asked for with the link's server-side
    /// options: the request timeout for the API's pools, so a query outliving the request that
    /// sent it stops holding a connection and a backend. `None` for commands, which may run long.
    pub statement_timeout: Option<Duration>,
    /// Requests of one tenant that may use the pool at once, so one tenant's slow reads or
    /// writes cannot take every connection from the others.
    pub per_tenant: u32,
}

/// A tenant's share of the pool when none is configured: three quarters of it, at least one.
pub fn default_share_per_tenant(max_connections: u32) -> u32 {
    (max_connections - max_connections / 4).max(1)
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
            statement_timeout: None,
            per_tenant: default_share_per_tenant(max_connections),
        }
    }
}
