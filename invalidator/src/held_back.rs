//! Tenants whose invalidations failed in a batch: the replica's next claims leave their events in
//! the outbox for a while, each tenant on a backoff of its own, so that the tenants Redis still
//! serves are not held back with them. On a Redis Cluster a tenant's keys live on one shard, and
//! a shard that is down or failing over fails only its own tenants.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff};
use openrisk_shared::db::{MAX_RECONNECT_DELAY, reconnect_backoff};
use prometheus::IntGauge;
use uuid::Uuid;

/// How long after its hold ended a tenant that a claim has offered to take since, without a
/// failure, is forgotten: its events were applied by another replica, or it has none left.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(2 * MAX_RECONNECT_DELAY.as_secs());

/// One tenant held back: until when, whether a claim has left it out since it failed, whether a
/// claim has offered to take its events since the hold ended, and the backoff its next failure
/// continues.
#[derive(Debug)]
struct Hold {
    until: Instant,
    sat_out: bool,
    offered: bool,
    backoff: ExponentialBackoff,
}

/// What holding a tenant back came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// How long the tenant sits out.
    pub delay: Duration,
    /// Whether the tenant was held already: a retry that failed again, not news.
    pub again: bool,
}

/// The tenants one replica holds back, and the gauge that counts them. Holds are the replica's
/// own: another replica that fails on the same tenant holds it back too.
#[derive(Debug, Clone)]
pub struct HeldBack {
    holds: Arc<Mutex<HashMap<Uuid, Hold>>>,
    /// `openrisk_invalidator_tenants_held_back`.
    gauge: IntGauge,
}

impl HeldBack {
    pub fn new(gauge: IntGauge) -> Self {
        Self { holds: Arc::default(), gauge }
    }

    /// The tenants whose events a claim made at `now` leaves in the outbox: those whose hold
    /// lasts past `now`, and those no claim has left out since they failed. Each sits out at
    /// least one claim however short its hold, because after a batch that failed as a whole the
    /// replica's own backoff and reconnection can outlast the hold, and the next claim must still
    /// go to the other tenants. Forgets the tenants offered and not failed again for
    /// [`FORGOTTEN_AFTER`] after their hold ended.
    pub fn sitting_out(&self, now: Instant) -> Vec<Uuid> {
        let mut holds = self.holds();
        holds.retain(|_, hold| !hold.offered || now < hold.until + FORGOTTEN_AFTER);
        let mut sitting_out = Vec::new();
        for (tenant, hold) in holds.iter_mut() {
            if hold.until > now || !hold.sat_out {
                hold.sat_out = true;
                sitting_out.push(*tenant);
            } else {
                hold.offered = true;
            }
        }
        self.count(&holds);
        sitting_out
    }

    /// When the replica should look at the outbox again for a held tenant, whether or not a write
    /// or the poll wakes it: when the first running hold ends, or at once (`now`) for a hold that
    /// ended while a claim left the tenant out, since no claim has offered to take it since.
    pub fn next_end(&self, now: Instant) -> Option<Instant> {
        let due = |hold: &Hold| {
            if hold.until > now { Some(hold.until) } else { (hold.sat_out && !hold.offered).then_some(now) }
        };
        self.holds().values().filter_map(due).min()
    }

    /// `tenant`'s invalidations failed at `now`: holds it back for the next step of its backoff
    /// ([`reconnect_backoff`]: 50–100 ms at first, doubling with each failure in a row, to
    /// 5–10 s).
    pub fn hold(&self, tenant: Uuid, now: Instant) -> Holding {
        let mut holds = self.holds();
        let (hold, again) = match holds.entry(tenant) {
            Entry::Occupied(held) => (held.into_mut(), true),
            Entry::Vacant(free) => {
                let backoff = reconnect_backoff().build();
                (free.insert(Hold { until: now, sat_out: false, offered: false, backoff }), false)
            }
        };
        let delay = hold.backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
        (hold.until, hold.sat_out, hold.offered) = (now + delay, false, false);
        self.count(&holds);
        Holding { delay, again }
    }

    /// `tenant`'s invalidations succeeded: a later failure starts its backoff over.
    pub fn release(&self, tenant: Uuid) {
        let mut holds = self.holds();
        if holds.remove(&tenant).is_some() {
            self.count(&holds);
        }
    }

    /// Sets the gauge to the tenants held back or, their hold over, not yet forgotten.
    fn count(&self, holds: &HashMap<Uuid, Hold>) {
        self.gauge.set(i64::try_from(holds.len()).unwrap_or(i64::MAX));
    }

    fn holds(&self) -> MutexGuard<'_, HashMap<Uuid, Hold>> {
        // A hold is written whole under the lock, so one left by a panic is still consistent.
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_back() -> HeldBack {
        HeldBack::new(IntGauge::new("held", "held").unwrap())
    }

    #[test]
    fn a_held_tenant_is_left_out_until_its_hold_ends() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let holding = held.hold(tenant, now);
        assert!(holding.delay > Duration::ZERO && holding.delay <= MAX_RECONNECT_DELAY && !holding.again);
        assert_eq!(held.next_end(now), Some(now + holding.delay));
        assert_eq!(held.sitting_out(now), vec![tenant]);
        assert_eq!(held.sitting_out(now + holding.delay), Vec::<Uuid>::new(), "the hold ends after its delay");
        assert_eq!(held.next_end(now + holding.delay), None, "and the claim that ended it offered to take it");
    }

    #[test]
    fn a_hold_that_ended_while_its_tenant_sat_out_is_due_at_once() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let late = now + held.hold(tenant, now).delay * 2;
        assert_eq!(held.sitting_out(late), vec![tenant], "the first claim after a reconnection, say");
        assert_eq!(held.next_end(late), Some(late), "no claim has offered to take it yet");
        assert_eq!(held.sitting_out(late), Vec::<Uuid>::new());
        assert_eq!(held.next_end(late), None, "one has");
    }

    #[test]
    fn a_held_tenant_sits_out_the_next_claim_even_after_its_hold_ended() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delay = held.hold(tenant, now).delay;
        let late = now + delay * 2;
        assert_eq!(held.sitting_out(late), vec![tenant], "no claim left it out yet");
        assert_eq!(held.sitting_out(late), Vec::<Uuid>::new(), "one did");
        assert!(held.hold(tenant, late).again);
        assert_eq!(held.sitting_out(late + MAX_RECONNECT_DELAY * 2), vec![tenant], "each failure, again");
    }

    #[test]
    fn each_failure_in_a_row_holds_a_tenant_longer_up_to_the_longest_delay() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delays: Vec<Duration> = (0..12).map(|_| held.hold(tenant, now).delay).collect();
        assert!(delays[3] > delays[0], "the backoff grows: {delays:?}");
        assert!(delays.iter().all(|delay| *delay <= MAX_RECONNECT_DELAY * 2), "and is bounded: {delays:?}");
    }

    #[test]
    fn a_success_releases_a_tenant_and_starts_its_backoff_over() {
        let held = held_back();
        let (tenant, other, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        let first = held.hold(tenant, now).delay;
        for _ in 0..8 {
            held.hold(tenant, now);
        }
        held.hold(other, now);
        assert_eq!(held.gauge.get(), 2);
        held.release(tenant);
        assert_eq!(held.sitting_out(now), vec![other], "only the tenant still failing is held");
        assert_eq!(held.gauge.get(), 1);
        assert!(held.hold(tenant, now).delay < first * 4, "the backoff starts over after a success");
    }

    #[test]
    fn a_tenant_offered_and_not_failed_again_long_after_its_hold_is_forgotten() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delay = held.hold(tenant, now).delay;
        held.sitting_out(now);
        held.sitting_out(now + delay + FORGOTTEN_AFTER * 2);
        assert_eq!(held.gauge.get(), 1, "not forgotten before a claim offered to take it");
        held.sitting_out(now + delay + FORGOTTEN_AFTER / 2);
        assert_eq!(held.gauge.get(), 1, "offered not long ago");
        held.sitting_out(now + delay + FORGOTTEN_AFTER);
        assert_eq!(held.gauge.get(), 0, "another replica applied its events, or it has none left");
        assert!(!held.hold(tenant, now + delay + FORGOTTEN_AFTER).again, "a new failure starts over");
    }
}
