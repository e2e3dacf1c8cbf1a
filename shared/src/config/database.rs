//! How Postgres is reached: the read replicas, and the dead-peer settings of every connection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Streaming read replicas of the primary at `database_url`, which the API reads cache misses
/// and bypassed reads from (never writes, nor anything inside a write transaction).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Replica URLs; `DATABASE_REPLICA_URLS` gives them comma-separated. Empty: every read goes
    /// to the primary.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub replica_urls: Vec<String>,
    /// Where the API listens for token revocations (a connection of its own to the primary), when
    /// `database_url` goes through a pooler in transaction mode, which cannot deliver `LISTEN`:
    /// a direct or session-mode URL. Absent: `database_url`.
    pub listen_url: Option<String>,
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
            listen_url: None,
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
