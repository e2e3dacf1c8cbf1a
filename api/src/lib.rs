//! The OpenRisk HTTP API: cache-first reads from Redis (kept exact by write-triggered
//! invalidation), writes to Postgres, bearer-token tenancy, Prometheus metrics.

pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod conditional;
pub mod db;
pub mod error;
pub mod field_errors;
pub mod filters;
pub mod hit_path;
pub mod hygiene;
pub mod metrics;
pub mod model;
pub mod paging;
pub mod readiness;
pub mod request_limits;
pub mod routes;
pub mod seed;
pub mod spec;
pub mod stored_enum;
pub mod tenant_share;
pub mod token_revocations;
mod value_type;
pub mod variant_budget;

pub use app::{AppOptions, AppState, Application};
