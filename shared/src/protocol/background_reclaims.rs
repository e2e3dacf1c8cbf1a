//! Reclaiming off the invalidating caller's path, a bounded number at a time.

use std::sync::Arc;

use redis::aio::ConnectionLike;
use tokio::sync::Semaphore;

use super::invalidation::{Reclaimable, reclaim};

/// How many reclaims one process runs at once. Each walks its member sets a chunk per round trip
/// on the connection its invalidations use, so more at once would only queue in front of them.
pub const RECLAIMS_AT_ONCE: usize = 4;

/// Runs [`reclaim`]s on tasks of their own, at most a fixed number at a time. Reclaiming is only
/// memory (the entries can no longer be hit, and they expire with their TTL), so while Redis is
/// slow the surplus is left to expire instead of piling up tasks and round trips that the next
/// invalidations would wait behind.
#[derive(Debug, Clone)]
pub struct BackgroundReclaims {
    slots: Arc<Semaphore>,
}

impl BackgroundReclaims {
    pub fn new(at_once: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(at_once)) }
    }

    /// Starts reclaiming `reclaimable` over `conn` and hands the outcome to `done`. Returns false,
    /// starting nothing, when every slot is taken; true when it started or there is nothing to do.
    pub fn start<C, F>(&self, mut conn: C, reclaimable: Reclaimable, done: F) -> bool
    where
        C: ConnectionLike + Send + 'static,
        F: FnOnce(redis::RedisResult<u64>) + Send + 'static,
    {
        if reclaimable.is_empty() {
            return true;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else { return false };
        tokio::spawn(async move {
            let outcome = reclaim(&mut conn, &reclaimable).await;
            drop(slot);
            done(outcome);
        });
        true
    }
}

impl Default for BackgroundReclaims {
    fn default() -> Self {
        Self::new(RECLAIMS_AT_ONCE)
    }
}
