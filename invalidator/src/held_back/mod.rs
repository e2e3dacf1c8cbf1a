//! Tenants whose invalidations failed in a batch: the replica's claims move their events aside
//! (`cache_outbox_held`, still pending) until a probe of the tenant's master succeeds, each
//! tenant probed on a backoff of its own, so that the tenants Redis still serves are not held
//! back with them and no batch waits for a master that may still be down. On a Redis Cluster a
//! tenant's keys live on one shard, and a shard that is down or failing over fails only its own
//! tenants.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
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

/// One tenant held back: where it stands, the backoff its next failure continues, the master (a
/// cluster's node id) its last failure came from when known, and, while its last failure was a
/// missing replica acknowledgement (its master applies what it is sent), the transaction id its
/// events written since are read from ([`HeldBack::unreplicated`]), the master that applied
/// those before it, when known, and the outbox ids of the events the last read returned, all
/// applied there: a read returns again the events of transactions that were still running, and
/// applying those again would drop the tenant's entries at every claim for as long as one runs.
#[derive(Debug)]
struct Hold {
    phase: Phase,
    backoff: ExponentialBackoff,
    failed_on: Option<Arc<str>>,
    unreplicated_since: Option<u64>,
    applied_on: Option<Arc<str>>,
    applied: HashSet<i64>,
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
            InvalidateError::NotReplicated { .. } | InvalidateError::MasterWithoutReplica => Self::Unreplicated,
        }
    }
}

impl Hold {
    /// Whether claims leave its events out: all but a tenant a probe cleared.
    fn sits_out(&self) -> bool {
        !matches!(self.phase, Phase::Cleared { .. })
    }

    /// Whether its probe waits for Redis replicas (`WAIT`), holding up the probes' connection.
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
    /// The probe answered `outcome` now: a success clears the tenant, a failure on `master` (as
    /// [`HeldBack::hold`] takes it) holds it again (the hold returned).
    pub fn answer(mut self, outcome: Result<(), Failed>, master: Option<Arc<str>>) -> Option<Holding> {
        self.answered = true;
        self.held_back.probed(self.tenant, Instant::now(), outcome.map_err(|failed| (failed, master)))
    }
}

impl Drop for ProbeOnItsWay {
    fn drop(&mut self) {
        // Only a tenant still waiting for this probe: one released since is not held again.
        if !self.answered && self.held_back.is_probing(self.tenant) {
            self.held_back.probed(self.tenant, Instant::now(), Err((Failed::Unreachable, None)));
        }
    }
}

/// The tenants one replica holds back, the gauge that counts them, and the signal that a probe
/// answered or a tenant became due for one at once. Holds are the replica's own: another replica
/// that fails on the same tenant holds it back too.
#[derive(Debug, Clone)]
pub struct HeldBack {
    holds: Arc<Mutex<HashMap<Uuid, Hold>>>,
    /// `openrisk_invalidator_tenants_held_back`.
    gauge: IntGauge,
    news: Arc<Notify>,
}

impl HeldBack {
    pub fn new(gauge: IntGauge) -> Self {
        Self { holds: Arc::default(), gauge, news: Arc::default() }
    }

    /// The tenants whose events a claim made at `now` leaves in the outbox: all but those a probe
    /// cleared. Forgets the tenants cleared `FORGOTTEN_AFTER` ago or more.
    pub fn sitting_out(&self, now: Instant) -> Vec<Uuid> {
        let mut holds = self.holds();
        holds.retain(|_, hold| !matches!(hold.phase, Phase::Cleared { since } if now >= since + FORGOTTEN_AFTER));
        holds.iter().filter(|(_, hold)| hold.sits_out()).map(|(tenant, _)| *tenant).collect()
    }

    /// The tenants whose hold has run out at `now`, now marked as probed: the caller sends each
    /// one probe and answers it through [`HeldBack::on_its_way`]. Of the tenants waiting for a
    /// Redis replica, one at a time: their probes share a connection, which a probe's `WAIT`
    /// holds up until the replicas answer or the wait times out.
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

    /// `tenant`'s invalidations, or its probe, failed at `now` on `master`, its master as the
    /// cluster watch names it (`None`: not known, the one recorded before stands): holds it back
    /// for the next step of its backoff ([`reconnect_backoff`]: 50–100 ms at first, doubling with
    /// each failure in a row, to 5–10 s). A failure on another master than the last starts the
    /// backoff over: what it waited out was the old master.
    pub fn hold(&self, tenant: Uuid, now: Instant, failed: Failed, master: Option<Arc<str>>) -> Holding {
        let mut holds = self.holds();
        let (hold, again) = match holds.entry(tenant) {
            Entry::Occupied(held) => (held.into_mut(), true),
            Entry::Vacant(free) => {
                let hold = Hold {
                    phase: Phase::Waiting { until: now },
                    backoff: reconnect_backoff().build(),
                    failed_on: None,
                    unreplicated_since: None,
                    applied_on: None,
                    applied: HashSet::new(),
                };
                (free.insert(hold), false)
            }
        };
        if let Some(master) = master {
            if hold.failed_on.as_ref().is_some_and(|before| *before != master) {
                hold.backoff = reconnect_backoff().build();
            }
            hold.failed_on = Some(master);
        }
        let delay = hold.backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
        hold.phase = Phase::Waiting { until: now + delay };
        // From the first transaction (0) the first time: the failed batch may not have held all.
        hold.unreplicated_since = match failed {
            Failed::Unreplicated => Some(hold.unreplicated_since.unwrap_or(0)),
            Failed::Unreachable => None,
        };
        if hold.unreplicated_since.is_none() {
            hold.applied_on = None;
            hold.applied.clear();
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
                    hold.applied.clear();
                }
                hold.applied_on = Some(master);
            }
            since.push((*tenant, *position));
        }
        since
    }

    /// Makes each tenant waiting out a hold whose master `master_of` now names is another than
    /// the one it failed on (a failover or a migration, as the cluster watch saw it) due for a
    /// probe at once, its backoff started over: a failover is followed as soon as it is seen
    /// rather than at the end of a hold of up to 10 s. Wakes an idle replica to send the probes;
    /// returns how many tenants became due.
    pub fn master_replaced(&self, now: Instant, master_of: impl Fn(Uuid) -> Option<Arc<str>>) -> usize {
        let mut replaced = 0;
        for (tenant, hold) in self.holds().iter_mut() {
            let (Phase::Waiting { .. }, Some(before)) = (hold.phase, &hold.failed_on) else { continue };
            let Some(master) = master_of(*tenant).filter(|master| master != before) else { continue };
            (hold.phase, hold.failed_on) = (Phase::Waiting { until: now }, Some(master));
            hold.backoff = reconnect_backoff().build();
            replaced += 1;
        }
        if replaced > 0 {
            self.news.notify_one();
        }
        replaced
    }

    /// The masters (cluster node ids) a held tenant waits for a Redis replica of: too few replicas
    /// confirmed its invalidations there, and no probe has seen one since. A batch applies the
    /// events of their other tenants on the master alone and holds those tenants the same way,
    /// rather than have each wait out a `WAIT` of its own, one after another on the connection
    /// every call to that master shares. A probe that sees a replica clears them all.
    pub fn masters_without_replica(&self) -> HashSet<Arc<str>> {
        let holds = self.holds();
        let waiting = holds.values().filter(|hold| hold.sits_out() && hold.waits_for_replica());
        waiting.filter_map(|hold| hold.failed_on.clone()).collect()
    }

    /// The outbox ids, by held tenant, of the events already applied on the tenant's master that
    /// a read from its position may return again: the next application leaves them out.
    pub fn applied_ids(&self) -> HashMap<Uuid, HashSet<i64>> {
        let holds = self.holds();
        let applied = holds.iter().filter(|(_, hold)| !hold.applied.is_empty());
        applied.map(|(tenant, hold)| (*tenant, hold.applied.clone())).collect()
    }

    /// `tenant`'s events of transactions before `next`, and the events `read` (the outbox ids of
    /// all those the last read of its events returned), have been applied on its master (a
    /// position only moves on: an older one would read again what was applied).
    pub fn applied_before(&self, tenant: Uuid, next: u64, read: HashSet<i64>) {
        let mut holds = self.holds();
        let Some(hold) = holds.get_mut(&tenant) else { return };
        if let Some(since) = hold.unreplicated_since.as_mut() {
            *since = (*since).max(next);
            hold.applied = read;
        }
    }

    /// `tenant`'s probe answered at `now`: a success clears it (its events are claimed again), a
    /// failure (on a master, as [`HeldBack::hold`] takes it) holds it for the next step of its
    /// backoff. Either way an idle replica is woken, to claim the cleared tenant's events or to
    /// wait for the new hold's end.
    fn probed(&self, tenant: Uuid, now: Instant, outcome: Result<(), (Failed, Option<Arc<str>>)>) -> Option<Holding> {
        let holding = match outcome {
            Ok(()) => {
                let mut holds = self.holds();
                if let Some(hold) = holds.get_mut(&tenant).filter(|hold| hold.phase == Phase::Probing) {
                    hold.phase = Phase::Cleared { since: now };
                    if let Some(master) = hold.failed_on.clone().filter(|_| hold.waits_for_replica()) {
                        // A replica confirmed its master's writes: so it does for that master's
                        // other tenants waiting for one (a probe on its way answers for itself).
                        let waiting = |hold: &&mut Hold| {
                            matches!(hold.phase, Phase::Waiting { .. })
                                && hold.waits_for_replica()
                                && hold.failed_on.as_ref() == Some(&master)
                        };
                        holds.values_mut().filter(waiting).for_each(|hold| hold.phase = Phase::Cleared { since: now });
                    }
                    self.count(&holds);
                }
                None
            }
            Err((failed, master)) => Some(self.hold(tenant, now, failed, master)),
        };
        self.news.notify_one();
        holding
    }

    /// The probe of `tenant`, which [`HeldBack::due_for_probe`] returned, to answer once sent.
    pub fn on_its_way(&self, tenant: Uuid) -> ProbeOnItsWay {
        ProbeOnItsWay { held_back: self.clone(), tenant, answered: false }
    }

    /// Whether `tenant` is held for a missing replica acknowledgement (its master answered): its
    /// probe waits for replicas, where one of a tenant whose master did not answer asks the master
    /// alone first.
    pub fn waits_for_replica(&self, tenant: Uuid) -> bool {
        self.holds().get(&tenant).is_some_and(Hold::waits_for_replica)
    }

    /// Whether a probe of `tenant` is on its way.
    fn is_probing(&self, tenant: Uuid) -> bool {
        self.holds().get(&tenant).is_some_and(|hold| hold.phase == Phase::Probing)
    }

    /// Returns once a probe has answered, or a tenant became due for one at once, since the last
    /// call returned (at once if one did in between).
    pub async fn news(&self) {
        self.news.notified().await;
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
mod tests;
