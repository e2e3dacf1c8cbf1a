//! Tenants whose invalidations failed in a batch: the replica's next claims leave their events in
//! the outbox for a while, each tenant on a backoff of its own, so that the tenants Redis still
//! serves are not held back with them. On a Redis Cluster a tenant's keys live on one shard, and
//! a shard that is down or failing over fails only its own tenants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff};
use openrisk_shared::db::{MAX_RECONNECT_DELAY, reconnect_backoff};
use uuid::Uuid;

/// One tenant held back: until when, whether a claim has left it out since it failed, and the
/// backoff its next failure continues.
#[derive(Debug)]
struct Hold {
    until: Instant,
    sat_out: bool,
    backoff: ExponentialBackoff,
}

/// The tenants one replica holds back. Holds are the replica's own: another replica that fails
/// on the same tenant holds it back too.
#[derive(Debug, Clone, Default)]
pub struct HeldBack(Arc<Mutex<HashMap<Uuid, Hold>>>);

impl HeldBack {
    /// The tenants whose events a claim made at `now` leaves in the outbox: those whose hold
    /// lasts past `now`, and those no claim has left out since they failed. Each sits out at
    /// least one claim however short its hold, because after a batch that failed as a whole the
    /// replica's own backoff and reconnection can outlast the hold, and the next claim must still
    /// go to the other tenants.
    pub fn sitting_out(&self, now: Instant) -> Vec<Uuid> {
        let mut holds = self.holds();
        let held = holds.iter_mut().filter(|(_, hold)| hold.until > now || !hold.sat_out);
        held.map(|(tenant, hold)| {
            hold.sat_out = true;
            *tenant
        })
        .collect()
    }

    /// `tenant`'s invalidations failed at `now`: holds it back for the next step of its backoff
    /// ([`reconnect_backoff`]: from 50 ms, doubling, to [`MAX_RECONNECT_DELAY`]), which it
    /// returns.
    pub fn hold(&self, tenant: Uuid, now: Instant) -> Duration {
        let mut holds = self.holds();
        let hold = (holds.entry(tenant)).or_insert_with(|| Hold {
            until: now,
            sat_out: false,
            backoff: reconnect_backoff().build(),
        });
        let delay = hold.backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
        (hold.until, hold.sat_out) = (now + delay, false);
        delay
    }

    /// How many tenants are held back or, their hold over, not yet invalidated since.
    pub fn count(&self) -> usize {
        self.holds().len()
    }

    /// `tenant`'s invalidations succeeded: a later failure starts its backoff over.
    pub fn release(&self, tenant: Uuid) {
        self.holds().remove(&tenant);
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Hold>> {
        // A hold is written whole under the lock, so one left by a panic is still consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_tenant_is_left_out_until_its_hold_ends() {
        let held = HeldBack::default();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delay = held.hold(tenant, now);
        assert!(delay > Duration::ZERO && delay <= MAX_RECONNECT_DELAY);
        assert_eq!(held.sitting_out(now), vec![tenant]);
        assert_eq!(held.sitting_out(now + delay), Vec::<Uuid>::new(), "the hold ends after its delay");
    }

    #[test]
    fn a_held_tenant_sits_out_the_next_claim_even_after_its_hold_ended() {
        let held = HeldBack::default();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delay = held.hold(tenant, now);
        let late = now + delay * 2;
        assert_eq!(held.sitting_out(late), vec![tenant], "no claim left it out yet");
        assert_eq!(held.sitting_out(late), Vec::<Uuid>::new(), "one did");
        held.hold(tenant, late);
        assert_eq!(held.sitting_out(late + MAX_RECONNECT_DELAY * 2), vec![tenant], "each failure, again");
    }

    #[test]
    fn each_failure_in_a_row_holds_a_tenant_longer_up_to_the_longest_delay() {
        let held = HeldBack::default();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delays: Vec<Duration> = (0..12).map(|_| held.hold(tenant, now)).collect();
        assert!(delays[3] > delays[0], "the backoff grows: {delays:?}");
        assert!(delays.iter().all(|delay| *delay <= MAX_RECONNECT_DELAY * 2), "and is bounded: {delays:?}");
    }

    #[test]
    fn a_success_releases_a_tenant_and_starts_its_backoff_over() {
        let held = HeldBack::default();
        let (tenant, other, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        let first = held.hold(tenant, now);
        for _ in 0..8 {
            held.hold(tenant, now);
        }
        held.hold(other, now);
        held.release(tenant);
        assert_eq!(held.sitting_out(now), vec![other], "only the tenant still failing is held");
        assert_eq!(held.count(), 1);
        assert!(held.hold(tenant, now) < first * 4, "the backoff starts over after a success");
    }
}
