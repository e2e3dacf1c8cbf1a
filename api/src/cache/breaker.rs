//! The circuit breakers in front of Redis: after repeated failures the API stops calling Redis
//! for a while and serves from Postgres, so a slow or dead Redis costs requests one timeout at
//! most, not one each. On a cluster each master has its own breaker, so a master that is down
//! costs only the tenants it serves their cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openrisk_shared::redis_cluster::ClusterWatch;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing { since: Instant },
}

/// Opens after `threshold` consecutive failures, lets one probe through once `open_for` has
/// passed, and closes on the first success.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    /// How long a probe may take before another request probes instead.
    probe_timeout: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration, probe_timeout: Duration) -> Self {
        Self { threshold, open_for, probe_timeout, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a Redis call may be made now; when the open period is over, the caller becomes
    /// the probe.
    pub fn allow(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now < until => false,
            State::Probing { since } if now.duration_since(since) < self.probe_timeout => false,
            State::Open { .. } | State::Probing { .. } => {
                *state = State::Probing { since: now };
                true
            }
        }
    }

    pub fn success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { failures: 0 }) {
            *state = State::Closed { failures: 0 };
        }
    }

    pub fn failure(&self) {
        let mut state = self.lock();
        let until = Instant::now() + self.open_for;
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            _ => State::Open { until },
        };
    }

    /// Closes the breaker if its open period (or its probe's time) ended before `answered_at`,
    /// when its master was heard answering: with no request of its tenants to probe it, it would
    /// stay open for good. One failure opens it again, as a failed probe would.
    pub fn close_if_open_until_before(&self, answered_at: Instant) {
        let mut state = self.lock();
        let over = match *state {
            State::Open { until } => until <= answered_at,
            State::Probing { since } => since + self.probe_timeout <= answered_at,
            State::Closed { .. } => false,
        };
        if over {
            *state = State::Closed { failures: self.threshold.saturating_sub(1) };
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }
}

/// A breaker per Redis master: the one of the master that serves a tenant's slot as the cluster
/// watch last saw it, or one shared breaker on a single node (and on a cluster before the watch's
/// first look). A failover makes a new master with a breaker of its own, closed.
#[derive(Debug)]
pub struct Breakers {
    shared: Arc<Breaker>,
    by_master: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
    topology: ClusterWatch,
    threshold: u32,
    open_for: Duration,
    probe_timeout: Duration,
}

impl Breakers {
    /// Breakers as [`Breaker::new`] makes them, one per master that `topology` names.
    pub fn new(threshold: u32, open_for: Duration, probe_timeout: Duration, topology: ClusterWatch) -> Self {
        Self {
            shared: Arc::new(Breaker::new(threshold, open_for, probe_timeout)),
            by_master: Mutex::default(),
            topology,
            threshold,
            open_for,
            probe_timeout,
        }
    }

    /// The breaker in front of `tenant`'s Redis master.
    pub fn of(&self, tenant: Uuid) -> Arc<Breaker> {
        let Some(master) = self.topology.master_of_tenant(tenant) else { return self.shared.clone() };
        let mut by_master = self.by_master.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = by_master.get(&master) {
            return breaker.clone();
        }
        // A master not seen before: forget those that no longer serve a slot (failed over).
        by_master.retain(|known, _| self.topology.serves(known));
        let breaker = Arc::new(Breaker::new(self.threshold, self.open_for, self.probe_timeout));
        by_master.insert(master, breaker.clone());
        breaker
    }

    /// Whether every breaker in use lets calls through: the shared one until the slots are known,
    /// then those of the masters that serve them (a master that no longer does is never probed).
    /// A breaker whose open period ended before the cluster watch last heard every master answer
    /// is closed first.
    pub fn all_closed(&self) -> bool {
        if !self.topology.knows_slots() {
            return self.shared.is_closed();
        }
        let answered_at = self.topology.last_look();
        let by_master = self.by_master.lock().unwrap_or_else(PoisonError::into_inner);
        by_master.iter().all(|(master, breaker)| {
            if let Some(answered_at) = answered_at {
                breaker.close_if_open_until_before(answered_at);
            }
            breaker.is_closed() || !self.topology.serves(master)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_once() {
        let breaker = Breaker::new(2, Duration::from_millis(0), Duration::from_secs(60));
        assert!(breaker.allow());
        breaker.failure();
        assert!(breaker.is_closed(), "one failure is below the threshold");
        breaker.failure();
        assert!(!breaker.is_closed());
        assert!(breaker.allow(), "the open period (0 ms) is over: this caller probes");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.success();
        assert!(breaker.is_closed() && breaker.allow());
    }

    #[test]
    fn an_answer_heard_after_the_open_period_closes_the_breaker_and_one_heard_during_it_does_not() {
        let breaker = Breaker::new(3, Duration::from_secs(60), Duration::from_secs(60));
        let opened = Instant::now();
        (0..3).for_each(|_| breaker.failure());
        breaker.close_if_open_until_before(opened + Duration::from_secs(30));
        assert!(!breaker.is_closed(), "heard while still open");
        breaker.close_if_open_until_before(opened + Duration::from_secs(61));
        assert!(breaker.is_closed());
        breaker.failure();
        assert!(!breaker.is_closed(), "closed that way, one failure opens it again");
    }

    #[test]
    fn a_probe_that_never_reported_back_is_closed_by_an_answer_heard_after_its_time() {
        let breaker = Breaker::new(1, Duration::ZERO, Duration::from_secs(1));
        breaker.failure();
        assert!(breaker.allow(), "this caller probes, and is never heard of again");
        let probing_since = Instant::now();
        breaker.close_if_open_until_before(probing_since);
        assert!(!breaker.is_closed(), "the probe may still answer");
        breaker.close_if_open_until_before(probing_since + Duration::from_secs(2));
        assert!(breaker.is_closed());
    }
}
