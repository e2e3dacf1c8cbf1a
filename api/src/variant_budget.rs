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
    /// Entries stored in this window.
    stored: u32,
    /// Reads in flight that hold an entry of the budget ([`Reservation`]).
    reading: u32,
}

impl VariantBudget {
    /// A budget of `limit` stored entries per (tenant, route) per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, windows: Mutex::default() }
    }

    /// Whether the tenant has stored its budget of entries for `route` in the current window
    /// (reads in flight not counted: their lists may well be stored already, as hits).
    pub fn exhausted(&self, tenant: Uuid, route: &'static str) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        windows
            .get(&(tenant, route))
            .is_some_and(|window| window.started.elapsed() < self.window && window.stored >= self.limit)
    }

    /// Takes one entry of the tenant's budget for `route` before its list is read, or `None` when
    /// the budget is spent: counting before the read, not after the fill, keeps concurrent misses
    /// from all passing the check and storing past the budget. Windows that ended are dropped, so
    /// the table holds only tenants that stored something within one TTL.
    pub fn reserve(&self, tenant: Uuid, route: &'static str) -> Option<Reservation<'_>> {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let started = match windows.get_mut(&(tenant, route)) {
            Some(window) if now.duration_since(window.started) < self.window => {
                if window.stored + window.reading >= self.limit {
                    return None;
                }
                window.reading += 1;
                window.started
            }
            _ => {
                windows.retain(|_, window| now.duration_since(window.started) < self.window);
                windows.insert((tenant, route), Window { started: now, stored: 0, reading: 1 });
                now
            }
        };
        Some(Reservation { budget: self, key: (tenant, route), started, stored: false })
    }
}

/// One entry of a budget, taken by [`VariantBudget::reserve`]; given back when dropped unless
/// [`Reservation::stored`] says the entry was stored.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a VariantBudget,
    key: (Uuid, &'static str),
    started: Instant,
    stored: bool,
}

impl Reservation<'_> {
    /// The entry was stored: it counts against the budget until its window ends.
    pub fn stored(mut self) {
        self.stored = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut windows = self.budget.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(window) = windows.get_mut(&self.key).filter(|window| window.started == self.started) {
            window.reading = window.reading.saturating_sub(1);
            window.stored += u32::from(self.stored);
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
        budget.reserve(a, "/list").unwrap().stored();
        assert!(!budget.exhausted(a, "/list"));
        budget.reserve(a, "/list").unwrap().stored();
        assert!(budget.exhausted(a, "/list"));
        assert!(budget.reserve(a, "/list").is_none());
        assert!(!budget.exhausted(a, "/other"));
        assert!(!budget.exhausted(b, "/list"));
    }

    #[test]
    fn reads_in_flight_hold_their_entries_and_one_that_stored_nothing_gives_its_back() {
        let budget = VariantBudget::new(2, Duration::from_secs(3600));
        let tenant = Uuid::new_v4();
        let (first, second) = (budget.reserve(tenant, "/list").unwrap(), budget.reserve(tenant, "/list").unwrap());
        assert!(budget.reserve(tenant, "/list").is_none(), "two reads in flight hold the whole budget");
        assert!(!budget.exhausted(tenant, "/list"), "but leave the hit path to hits: nothing is stored yet");
        first.stored();
        drop(second);
        assert!(budget.reserve(tenant, "/list").is_some(), "the read that stored nothing gave its entry back");
    }

    #[test]
    fn a_new_window_starts_with_the_whole_budget() {
        let budget = VariantBudget::new(1, Duration::ZERO);
        let tenant = Uuid::new_v4();
        budget.reserve(tenant, "/list").unwrap().stored();
        assert!(!budget.exhausted(tenant, "/list"), "a zero-length window has always ended");
    }
}
