//! Tenants whose invalidations failed in a batch: the replica's claims leave their events in the
//! outbox until a probe of the tenant's master succeeds, each tenant probed on a backoff of its
//! own, so that the tenants Redis still serves are not held back with them and no batch waits
//! for a master that may still be down. On a Redis Cluster a tenant's keys live on one shard,
//! and a shard that is down or failing over fails only its own tenants.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff};
use openrisk_shared::db::{MAX_RECONNECT_DELAY, reconnect_backoff};
use openrisk_shared::protocol::InvalidateError;
use prometheus::IntGauge;
use tokio::sync::Notify;
use uuid::Uuid;

/// How long a tenant cleared by a probe is remembered: a failure of its events within this time
/// continues its backoff instead of starting over (a master that answers a probe but fails the
/// invalidations is not probed every 50 ms).
const FORGOTTEN_AFTER: Duration = Duration::from_secs(2 * MAX_RECONNECT_DELAY.as_secs());

/// Where one held tenant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Left out of claims; probed once `until` has passed.
    Waiting { until: Instant },
    /// Left out of claims while a probe is on its way; its answer moves the tenant on.
    Probing,
    /// A probe succeeded at `since`: the tenant's events are claimed again.
    Cleared { since: Instant },
}

/// One tenant held back: where it stands, the backoff its next failure continues, and, while its
/// last failure was a missing replica acknowledgement (its master applies what it is sent), the
/// transaction id its events written since are read from ([`HeldBack::unreplicated`]) and the
/// master (a cluster's node id) that applied those before it, when known.
#[derive(Debug)]
struct Hold {
    phase: Phase,
    backoff: ExponentialBackoff,
    unreplicated_since: Option<u64>,
    applied_on: Option<Arc<str>>,
}

/// Why a tenant's invalidations, or its probe, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Its master did not answer, or answered with an error.
    Unreachable,
    /// Its master applied them, but too few Redis replicas confirmed in time.
    Unreplicated,
}

impl From<&InvalidateError> for Failed {
    fn from(error: &InvalidateError) -> Self {
        match error {
            InvalidateError::Redis(_) => Self::Unreachable,
            InvalidateError::NotReplicated { .. } => Self::Unreplicated,
        }
    }
}

impl Hold {
    /// Whether claims leave its events out: all but a tenant a probe cleared.
    fn sits_out(&self) -> bool {
        !matches!(self.phase, Phase::Cleared { .. })
    }

    /// Whether its probe waits for Redis replicas (`WAIT`), holding up its master's connection.
    fn waits_for_replica(&self) -> bool {
        self.unreplicated_since.is_some()
    }
}

/// Whether a probe that waits for Redis replicas is on its way.
fn replica_wait_on_its_way(holds: &HashMap<Uuid, Hold>) -> bool {
    holds.values().any(|hold| hold.phase == Phase::Probing && hold.waits_for_replica())
}

/// What holding a tenant back came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// How long until the tenant is probed.
    pub delay: Duration,
    /// Whether the tenant was held already (or cleared not long ago): a failure again, not news.
    pub again: bool,
}

/// A probe sent and not answered yet. Its answer moves the tenant on ([`ProbeOnItsWay::answer`]);
/// dropped unanswered (its task panicked or was cancelled) it counts as a failed probe, so the
/// tenant is probed again after the next step of its backoff instead of sitting out for good.
#[derive(Debug)]
pub struct ProbeOnItsWay {
    held_back: HeldBack,
    tenant: Uuid,
    answered: bool,
}

impl ProbeOnItsWay {
    /// The probe answered `outcome` now: a success clears the tenant, a failure holds it again
    /// (the hold returned).
    pub fn answer(mut self, outcome: Result<(), Failed>) -> Option<Holding> {
        self.answered = true;
        self.held_back.probed(self.tenant, Instant::now(), outcome)
    }
}

impl Drop for ProbeOnItsWay {
    fn drop(&mut self) {
        // Only a tenant still waiting for this probe: one released since is not held again.
        if !self.answered && self.held_back.is_probing(self.tenant) {
            self.held_back.probed(self.tenant, Instant::now(), Err(Failed::Unreachable));
        }
    }
}

/// The tenants one replica holds back, the gauge that counts them, and the signal that a probe
/// answered. Holds are the replica's own: another replica that fails on the same tenant holds
/// it back too.
#[derive(Debug, Clone)]
pub struct HeldBack {
    holds: Arc<Mutex<HashMap<Uuid, Hold>>>,
    /// `openrisk_invalidator_tenants_held_back`.
    gauge: IntGauge,
    answered: Arc<Notify>,
}

impl HeldBack {
    pub fn new(gauge: IntGauge) -> Self {
        Self { holds: Arc::default(), gauge, answered: Arc::default() }
    }

    /// The tenants whose events a claim made at `now` leaves in the outbox: all but those a probe
    /// cleared. Forgets the tenants cleared [`FORGOTTEN_AFTER`] ago or more.
    pub fn sitting_out(&self, now: Instant) -> Vec<Uuid> {
        let mut holds = self.holds();
        holds.retain(|_, hold| !matches!(hold.phase, Phase::Cleared { since } if now >= since + FORGOTTEN_AFTER));
        holds.iter().filter(|(_, hold)| hold.sits_out()).map(|(tenant, _)| *tenant).collect()
    }

    /// The tenants whose hold has run out at `now`, now marked as probed: the caller sends each
    /// one probe and answers it through [`HeldBack::on_its_way`]. Of the tenants waiting for a
    /// Redis replica, one at a time: their probe's `WAIT` holds up the connection it shares with
    /// every other call to that master until the replica answers or the wait times out.
    pub fn due_for_probe(&self, now: Instant) -> Vec<Uuid> {
        let mut holds = self.holds();
        let mut replica_wait_free = !replica_wait_on_its_way(&holds);
        let mut due = Vec::new();
        for (tenant, hold) in holds.iter_mut() {
            if !matches!(hold.phase, Phase::Waiting { until } if until <= now) {
                continue;
            }
            if hold.waits_for_replica() {
                if !replica_wait_free {
                    continue;
                }
                replica_wait_free = false;
            }
            hold.phase = Phase::Probing;
            due.push(*tenant);
        }
        due
    }

    /// When the first running hold ends, so that an idle replica sends its probe then, whether
    /// or not a write or the poll wakes it. Holds waiting for a replica count only while no probe
    /// of theirs is on its way: that probe's answer wakes the replica (else a hold ended and
    /// not yet probed would make it look again at once, and again, until that answer).
    pub fn next_probe(&self) -> Option<Instant> {
        let holds = self.holds();
        let busy = replica_wait_on_its_way(&holds);
        let until = |hold: &Hold| match hold.phase {
            Phase::Waiting { until } if !(busy && hold.waits_for_replica()) => Some(until),
            _ => None,
        };
        holds.values().filter_map(until).min()
    }

    /// `tenant`'s invalidations, or its probe, failed at `now`: holds it back for the next step of
    /// its backoff ([`reconnect_backoff`]: 50–100 ms at first, doubling with each failure in a
    /// row, to 5–10 s).
    pub fn hold(&self, tenant: Uuid, now: Instant, failed: Failed) -> Holding {
        let mut holds = self.holds();
        let (hold, again) = match holds.entry(tenant) {
            Entry::Occupied(held) => (held.into_mut(), true),
            Entry::Vacant(free) => {
                let backoff = reconnect_backoff().build();
                let hold =
                    Hold { phase: Phase::Waiting { until: now }, backoff, unreplicated_since: None, applied_on: None };
                (free.insert(hold), false)
            }
        };
        let delay = hold.backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
        hold.phase = Phase::Waiting { until: now + delay };
        // From the first transaction (0) the first time: the failed batch may not have held all.
        hold.unreplicated_since = match failed {
            Failed::Unreplicated => Some(hold.unreplicated_since.unwrap_or(0)),
            Failed::Unreachable => None,
        };
        if hold.unreplicated_since.is_none() {
            hold.applied_on = None;
        }
        self.count(&holds);
        Holding { delay, again }
    }

    /// The held tenants whose master applies what it is sent although too few replicas confirm
    /// it, each with the transaction id from which its events are still to be applied there.
    /// `master_of` names a tenant's master now (`None`: unknown, a single Redis say); a tenant
    /// whose master is another than the one that applied its events so far (a failover, maybe to
    /// a replica that never received them) has them all applied again, from its first transaction.
    pub fn unreplicated(&self, master_of: impl Fn(Uuid) -> Option<Arc<str>>) -> Vec<(Uuid, u64)> {
        let mut held = self.holds();
        let mut since = Vec::new();
        for (tenant, hold) in held.iter_mut().filter(|(_, hold)| hold.sits_out()) {
            let Some(position) = hold.unreplicated_since.as_mut() else { continue };
            if let Some(master) = master_of(*tenant) {
                if hold.applied_on.as_ref().is_some_and(|applied_on| *applied_on != master) {
                    *position = 0;
                }
                hold.applied_on = Some(master);
            }
            since.push((*tenant, *position));
        }
        since
    }

    /// `tenant`'s events of transactions before `next` have been applied on its master (a
    /// position only moves on: an older one would read again what was applied).
    pub fn applied_before(&self, tenant: Uuid, next: u64) {
        if let Some(since) = self.holds().get_mut(&tenant).and_then(|hold| hold.unreplicated_since.as_mut()) {
            *since = (*since).max(next);
        }
    }

    /// `tenant`'s probe answered at `now`: a success clears it (its events are claimed again), a
    /// failure holds it for the next step of its backoff. Either way an idle replica is woken, to
    /// claim the cleared tenant's events or to wait for the new hold's end.
    fn probed(&self, tenant: Uuid, now: Instant, outcome: Result<(), Failed>) -> Option<Holding> {
        let holding = match outcome {
            Ok(()) => {
                let mut holds = self.holds();
                if let Some(hold) = holds.get_mut(&tenant).filter(|hold| hold.phase == Phase::Probing) {
                    hold.phase = Phase::Cleared { since: now };
                    self.count(&holds);
                }
                None
            }
            Err(failed) => Some(self.hold(tenant, now, failed)),
        };
        self.answered.notify_one();
        holding
    }

    /// The probe of `tenant`, which [`HeldBack::due_for_probe`] returned, to answer once sent.
    pub fn on_its_way(&self, tenant: Uuid) -> ProbeOnItsWay {
        ProbeOnItsWay { held_back: self.clone(), tenant, answered: false }
    }

    /// Whether a probe of `tenant` is on its way.
    fn is_probing(&self, tenant: Uuid) -> bool {
        self.holds().get(&tenant).is_some_and(|hold| hold.phase == Phase::Probing)
    }

    /// Returns once a probe has answered since the last call returned (at once if one did in
    /// between).
    pub async fn next_answer(&self) {
        self.answered.notified().await;
    }

    /// `tenant`'s invalidations succeeded: a later failure starts its backoff over.
    pub fn release(&self, tenant: Uuid) {
        let mut holds = self.holds();
        if holds.remove(&tenant).is_some() {
            self.count(&holds);
        }
    }

    /// Sets the gauge to the tenants whose events claims leave out.
    fn count(&self, holds: &HashMap<Uuid, Hold>) {
        let held = holds.values().filter(|hold| hold.sits_out()).count();
        self.gauge.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    fn holds(&self) -> MutexGuard<'_, HashMap<Uuid, Hold>> {
        // A hold is written whole under the lock, so one left by a panic is still consistent.
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single Redis: no tenant's master is known.
    fn no_master(_: Uuid) -> Option<Arc<str>> {
        None
    }

    fn held_back() -> HeldBack {
        HeldBack::new(IntGauge::new("held", "held").unwrap())
    }

    #[test]
    fn a_held_tenant_is_left_out_of_claims_until_a_probe_clears_it() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let holding = held.hold(tenant, now, Failed::Unreachable);
        assert!(holding.delay > Duration::ZERO && holding.delay <= MAX_RECONNECT_DELAY && !holding.again);
        assert_eq!(held.next_probe(), Some(now + holding.delay));
        assert_eq!(held.due_for_probe(now), Vec::<Uuid>::new(), "not probed before its hold ends");
        let ended = now + holding.delay;
        assert_eq!(held.due_for_probe(ended), vec![tenant]);
        assert_eq!(held.due_for_probe(ended), Vec::<Uuid>::new(), "one probe at a time");
        assert_eq!(held.next_probe(), None, "the probe's answer moves it on");
        assert_eq!(held.sitting_out(ended + MAX_RECONNECT_DELAY * 4), vec![tenant], "however long the probe takes");
        held.probed(tenant, ended, Ok(()));
        assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new());
        assert_eq!(held.gauge.get(), 0);
    }

    #[test]
    fn a_failed_probe_holds_the_tenant_for_the_next_step_of_its_backoff() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let first = held.hold(tenant, now, Failed::Unreachable).delay;
        let ended = now + first;
        held.due_for_probe(ended);
        let again = held.hold(tenant, ended, Failed::Unreachable);
        assert!(again.again);
        assert_eq!(held.next_probe(), Some(ended + again.delay));
        assert_eq!(held.sitting_out(ended), vec![tenant]);
        assert_eq!(held.gauge.get(), 1);
    }

    #[test]
    fn a_probe_dropped_unanswered_counts_as_a_failed_one() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let ended = now + held.hold(tenant, now, Failed::Unreachable).delay;
        assert_eq!(held.due_for_probe(ended), vec![tenant]);
        drop(held.on_its_way(tenant));
        assert!(held.next_probe().is_some(), "probed again after its next backoff step");
        assert_eq!(held.sitting_out(ended), vec![tenant]);

        let ended = held.next_probe().unwrap();
        assert_eq!(held.due_for_probe(ended), vec![tenant]);
        assert_eq!(held.on_its_way(tenant).answer(Ok(())), None);
        assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new(), "an answered probe is not failed by its drop");

        held.hold(tenant, ended, Failed::Unreachable);
        let ended = held.next_probe().unwrap();
        assert_eq!(held.due_for_probe(ended), vec![tenant]);
        let probe = held.on_its_way(tenant);
        held.release(tenant);
        drop(probe);
        assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new(), "a tenant released since is not held again");
    }

    #[tokio::test]
    async fn each_answer_of_a_probe_wakes_the_replica_once() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let woken = tokio::time::timeout(Duration::from_millis(20), held.next_answer()).await;
        assert!(woken.is_err(), "no probe, no wake-up");
        let ended = now + held.hold(tenant, now, Failed::Unreachable).delay;
        held.due_for_probe(ended);
        let again = held.probed(tenant, ended, Err(Failed::Unreachable)).expect("held again");
        held.next_answer().await;
        assert_eq!(held.next_probe(), Some(ended + again.delay), "the woken replica waits for the new hold's end");
        let ended = ended + again.delay;
        held.due_for_probe(ended);
        assert_eq!(held.probed(tenant, ended, Ok(())), None);
        held.next_answer().await;
        assert_eq!(held.sitting_out(ended), Vec::<Uuid>::new(), "and claims the cleared tenant's events");
        let woken = tokio::time::timeout(Duration::from_millis(20), held.next_answer()).await;
        assert!(woken.is_err(), "one answer, one wake-up");
    }

    #[test]
    fn a_tenant_whose_master_changed_while_no_replica_confirmed_has_its_events_applied_again_from_the_first() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        held.hold(tenant, now, Failed::Unreplicated);
        assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 0)]);
        held.applied_before(tenant, 42);
        assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 42)], "the same master keeps them");
        assert_eq!(held.unreplicated(no_master), vec![(tenant, 42)], "an unknown master is not a new one");
        assert_eq!(held.unreplicated(|_| Some(b.clone())), vec![(tenant, 0)], "a new master gets them all");
        held.applied_before(tenant, 50);
        assert_eq!(held.unreplicated(|_| Some(b.clone())), vec![(tenant, 50)]);

        held.hold(tenant, now, Failed::Unreachable);
        held.hold(tenant, now, Failed::Unreplicated);
        assert_eq!(held.unreplicated(|_| Some(a.clone())), vec![(tenant, 0)], "after an outage, from the first");
        held.applied_before(tenant, 60);
        assert_eq!(
            held.unreplicated(|_| Some(a.clone())),
            vec![(tenant, 60)],
            "the master then applied is the one kept"
        );
    }

    #[test]
    fn only_a_tenant_whose_replicas_failed_to_confirm_has_its_new_events_applied_on_its_master() {
        let held = held_back();
        let (unreplicated, unreachable, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        held.hold(unreplicated, now, Failed::Unreplicated);
        held.hold(unreachable, now, Failed::Unreachable);
        assert_eq!(held.unreplicated(no_master), vec![(unreplicated, 0)], "from the first transaction at first");
        held.applied_before(unreplicated, 42);
        held.hold(unreplicated, now, Failed::Unreplicated);
        assert_eq!(held.unreplicated(no_master), vec![(unreplicated, 42)], "a failure again keeps what was applied");
        held.applied_before(unreplicated, 7);
        assert_eq!(held.unreplicated(no_master), vec![(unreplicated, 42)], "a position only moves on");
        held.hold(unreplicated, now, Failed::Unreachable);
        assert_eq!(held.unreplicated(no_master), vec![], "a master that does not answer is sent nothing but probes");
    }

    #[test]
    fn tenants_waiting_for_a_redis_replica_are_probed_one_at_a_time() {
        let held = held_back();
        let now = Instant::now();
        let waiting: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let unreachable = Uuid::new_v4();
        for tenant in &waiting {
            held.hold(*tenant, now, Failed::Unreplicated);
        }
        held.hold(unreachable, now, Failed::Unreachable);
        let later = now + MAX_RECONNECT_DELAY * 2;
        let first = held.due_for_probe(later);
        assert_eq!(first.len(), 2, "one waiting for a replica, and the unreachable one: {first:?}");
        assert!(first.contains(&unreachable));
        assert_eq!(held.due_for_probe(later), Vec::<Uuid>::new(), "the next once that probe answers");
        assert_eq!(held.next_probe(), None, "which wakes the replica: it need not look before");
        let probed = first.into_iter().find(|tenant| *tenant != unreachable).unwrap();
        held.probed(probed, later, Ok(()));
        assert_eq!(held.due_for_probe(later).len(), 1);
    }

    #[test]
    fn each_failure_in_a_row_holds_a_tenant_longer_up_to_the_longest_delay() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let delays: Vec<Duration> = (0..12).map(|_| held.hold(tenant, now, Failed::Unreachable).delay).collect();
        assert!(delays[3] > delays[0], "the backoff grows: {delays:?}");
        assert!(delays.iter().all(|delay| *delay <= MAX_RECONNECT_DELAY * 2), "and is bounded: {delays:?}");
    }

    #[test]
    fn a_success_releases_a_tenant_and_starts_its_backoff_over() {
        let held = held_back();
        let (tenant, other, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        let first = held.hold(tenant, now, Failed::Unreachable).delay;
        for _ in 0..8 {
            held.hold(tenant, now, Failed::Unreachable);
        }
        held.hold(other, now, Failed::Unreachable);
        assert_eq!(held.gauge.get(), 2);
        held.release(tenant);
        assert_eq!(held.sitting_out(now), vec![other], "only the tenant still failing is held");
        assert_eq!(held.gauge.get(), 1);
        assert!(
            held.hold(tenant, now, Failed::Unreachable).delay < first * 4,
            "the backoff starts over after a success"
        );
    }

    #[test]
    fn a_cleared_tenant_that_fails_soon_after_continues_its_backoff_and_one_that_does_not_is_forgotten() {
        let held = held_back();
        let (tenant, now) = (Uuid::new_v4(), Instant::now());
        let ended = now + held.hold(tenant, now, Failed::Unreachable).delay;
        held.due_for_probe(ended);
        held.probed(tenant, ended, Ok(()));
        assert!(
            held.hold(tenant, ended, Failed::Unreachable).again,
            "its events failed though the master answered the probe"
        );
        let ended = ended + MAX_RECONNECT_DELAY * 2;
        held.due_for_probe(ended);
        held.probed(tenant, ended, Ok(()));
        held.sitting_out(ended + FORGOTTEN_AFTER / 2);
        assert!(held.holds().contains_key(&tenant), "cleared not long ago");
        held.sitting_out(ended + FORGOTTEN_AFTER);
        assert!(!held.holds().contains_key(&tenant), "another replica applied its events, or it has none left");
        assert!(!held.hold(tenant, ended + FORGOTTEN_AFTER, Failed::Unreachable).again, "a new failure starts over");
    }
}
