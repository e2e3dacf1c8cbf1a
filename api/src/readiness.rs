//! The checks of Postgres and Redis behind `/readyz`, one at a time per process.
//!
//! `/readyz` needs no token, so anyone may call it as often as they like. Each check takes a
//! pooled connection (outside every tenant's share) and sends a Redis `PING`; a caller that
//! arrives while a check runs is given that check's result instead of starting another, so a
//! flood of probes holds at most one connection and one `PING` at a time. The check runs as a
//! task of its own: callers that go away never leave it half done, or its result unclaimed, for
//! a later one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::cache::Cache;
use crate::db::Db;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyCheck {
    /// Postgres answered.
    pub postgres: bool,
    /// The last migration Postgres has applied, when it answered.
    pub schema_version: Option<i64>,
    /// Redis (every master of a cluster) answered `PING`; false when the cache is disabled.
    pub redis: bool,
}

/// Runs the dependency checks, sharing a running one with every caller that arrives meanwhile.
pub struct ReadinessChecks {
    db: Db,
    cache: Arc<Cache>,
    /// How long each dependency may take to answer before it counts as down.
    limit: Duration,
    running: Mutex<Option<Shared<BoxFuture<'static, DependencyCheck>>>>,
}

impl std::fmt::Debug for ReadinessChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessChecks").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl ReadinessChecks {
    /// Checks of `db` and `cache`, each given `limit` to answer.
    pub fn new(db: Db, cache: Arc<Cache>, limit: Duration) -> Self {
        Self { db, cache, limit, running: Mutex::new(None) }
    }

    /// The result of a check started no earlier than this call, less the check's own `limit`:
    /// the one running now, or a new one.
    pub async fn check(&self) -> DependencyCheck {
        let check = {
            let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match running.as_ref() {
                Some(check) if check.peek().is_none() => check.clone(),
                _ => running.insert(self.start()).clone(),
            }
        };
        check.await
    }

    /// Starts a check of both dependencies at once, each within `limit`.
    fn start(&self) -> Shared<BoxFuture<'static, DependencyCheck>> {
        let (db, cache, limit) = (self.db.clone(), self.cache.clone(), self.limit);
        let task = tokio::spawn(async move {
            // A disabled cache's ping answers false at once, without I/O.
            let (postgres, redis) = tokio::join!(
                tokio::time::timeout(limit, db.schema_version()),
                tokio::time::timeout(limit, cache.ping())
            );
            let schema_version = postgres.ok().and_then(Result::ok);
            DependencyCheck { postgres: schema_version.is_some(), schema_version, redis: matches!(redis, Ok(true)) }
        });
        // A check that panicked found nothing answering.
        let nothing = DependencyCheck { postgres: false, schema_version: None, redis: false };
        let check = task.map(move |finished| finished.unwrap_or(nothing));
        let check = check.boxed().shared();
        // Driven to its end whoever waits for it, so that `peek` tells when it has ended even if
        // every caller went away first, and a later caller never takes its old result.
        tokio::spawn(check.clone());
        check
    }
}
