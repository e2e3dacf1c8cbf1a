//! The bound on how many list entries one tenant can store per route: each process lets a
//! (tenant, route) store at most `cache.max_entries_per_route` entries per window as long as the
//! longest entry TTL. An entry outlives its window by at most one more window, so no tenant holds
//! more than twice the budget per route and API process, whatever filters it invents; past the
//! budget its lists are read from Postgres until the window ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Entries stored in the current window, per (tenant, route).
#[derive(Debug)]
pub struct VariantBudget {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<(Uuid, &'static str), Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    stored: u32,
}

impl VariantBudget {
    /// A budget of `limit` stored entries per (tenant, route) per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, windows: Mutex::default() }
    }

    /// Whether the tenant has stored its budget of entries for `route` in the current window.
    pub fn exhausted(&self, tenant: Uuid, route: &'static str) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        windows
            .get(&(tenant, route))
            .is_some_and(|window| window.started.elapsed() < self.window && window.stored >= self.limit)
    }

    /// Counts one entry the tenant stored for `route`. Windows that ended are dropped, so the
    /// table holds only tenants that stored something within one TTL.
    pub fn record_stored(&self, tenant: Uuid, route: &'static str) {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        match windows.get_mut(&(tenant, route)) {
            Some(window) if now.duration_since(window.started) < self.window => window.stored += 1,
            _ => {
                windows.retain(|_, window| now.duration_since(window.started) < self.window);
                windows.insert((tenant, route), Window { started: now, stored: 1 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_budget_is_refused_for_that_route_only() {
        let budget = VariantBudget::new(2, Duration::from_secs(3600));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        budget.record_stored(a, "/list");
        assert!(!budget.exhausted(a, "/list"));
        budget.record_stored(a, "/list");
        assert!(budget.exhausted(a, "/list"));
        assert!(!budget.exhausted(a, "/other"));
        assert!(!budget.exhausted(b, "/list"));
    }

    #[test]
    fn a_new_window_starts_with_the_whole_budget() {
        let budget = VariantBudget::new(1, Duration::ZERO);
        let tenant = Uuid::new_v4();
        budget.record_stored(tenant, "/list");
        assert!(!budget.exhausted(tenant, "/list"), "a zero-length window has always ended");
    }
}
