//! What the OpenRisk API and the invalidator must agree on, defined once: configuration, the
//! Redis key and tag scheme, the cache consistency protocol (its Lua scripts), the invalidation
//! event read from the outbox and the SQL of the outbox contract, the `Cache-Status` values,
//! telemetry set-up, the HTTP server loop and the servers' shared command-line option.

pub mod advisory_locks;
pub mod cache_status;
pub mod command_line;
pub mod config;
pub mod db;
pub mod event;
pub mod http_server;
pub mod keys;
pub mod metrics;
pub mod outbox;
pub mod postgres_tls;
pub mod protocol;
pub mod redis_cluster;
pub mod redis_connection;
pub mod tasks;
pub mod telemetry;

pub use cache_status::CacheStatus;
pub use config::{ConfigError, Settings};
pub use keys::{Keyspace, Tag, TagError};
